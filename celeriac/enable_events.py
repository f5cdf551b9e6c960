"""Turning task events on in workers started without ``-E``, as Flower's ``--enable_events``.

A worker sends task events only when started with ``-E`` (``worker_send_task_events``) or
after an ``enable_events`` remote-control command; a worker that restarts forgets the command.
So, like Flower, the instance that ingests a cluster broadcasts ``enable_events`` every
:data:`INTERVAL` seconds (Celery's ``app.control.enable_events()``). A follower on a shared
store does not: its leader does.

``task-sent`` events come from the clients that send tasks (``task_send_sent_event``), not from
workers: no remote command can turn those on.

The broadcast runs on a daemon thread of its own, never on the event loop or the event reader's
thread: Celery's mailbox publishes with kombu's ``retry=True``, which, when the connection
breaks under it, reconnects for as long as the broker is down; that must block nothing but the
next broadcast. Before each, a connection kept for the purpose (no churn in the broker's log,
opened anew after an error) is checked with a bounded retry, so a broker already down costs a
logged failure rather than a wait; the message itself goes out through the app's producer pool,
as every Celery control command. A broadcast still waiting after :data:`SLOW` seconds is
logged, so an outage that starts mid-publish shows while it lasts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from celeriac.broker import broker_url

log = logging.getLogger("celeriac")

#: Seconds between two broadcasts (Flower's 5 s).
INTERVAL = 5.0
#: A broadcast waiting this long for the broker is logged.
SLOW = 10.0


class EventsSwitch:
    """Broadcasts ``enable_events`` every ``interval`` seconds while ``wanted()`` says so."""

    def __init__(
        self,
        app: Celery,
        wanted: Callable[[], bool] = lambda: True,
        interval: float = INTERVAL,
        label: str = "",
    ) -> None:
        self.app = app
        self.wanted = wanted
        self.interval = interval
        self.label = label  # the cluster's name in log lines, with several
        self.sent = 0  # broadcasts sent, for tests and the curious
        self._conn: Any = None
        self._trouble: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="celeriac-enable-events", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)  # a publish stuck on a dead broker is left behind
        self._drop()

    def _run(self) -> None:
        log.info(
            "enable_events%s: asking the workers for task events every %g s while "
            "ingesting (--no-enable-events to leave them alone)",
            self._where,
            self.interval,
        )
        while not self._stop.is_set():
            try:
                wanted = self.wanted()
            except Exception:  # never let the thread die; ask again next round
                wanted = False
            if wanted:
                self.send()
            self._stop.wait(self.interval)

    def send(self) -> bool:
        """One broadcast; False (logged once while it lasts) if the broker cannot be reached."""
        try:
            if self._conn is None:
                self._conn = self.app.connection_for_write()
            self._conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=5)
            waiting = threading.Timer(
                SLOW,
                self._complain,
                (f"still waiting for the broker after {SLOW:g} s (kombu keeps reconnecting)",),
            )
            waiting.daemon = True
            waiting.start()
            try:
                self.app.control.enable_events(connection=self._conn)
            finally:
                waiting.cancel()
        except Exception as exc:  # a broker gone away: try again, on a new connection
            self._drop()
            self._complain(self._scrub(f"{type(exc).__name__}: {exc}"))
            return False
        self.sent += 1
        if self._trouble is not None:
            self._trouble = None
            log.info("enable_events%s: broker reached again", self._where)
        return True

    def _scrub(self, text: str) -> str:
        """The broker's password never reaches a log line, whatever an error quotes."""
        for url in broker_url(self.app).split(";"):
            with contextlib.suppress(ValueError):
                password = urlsplit(url.strip()).password
                if password:
                    text = text.replace(password, "***")
        return text

    @property
    def _where(self) -> str:
        return f" (cluster {self.label})" if self.label else ""

    def _complain(self, reason: str) -> None:
        if reason != self._trouble:
            self._trouble = reason
            log.warning(
                "cannot broadcast enable_events%s: %s; retrying every %g s",
                self._where,
                reason,
                self.interval,
            )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                conn.release()
