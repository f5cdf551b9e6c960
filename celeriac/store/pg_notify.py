"""Live updates between instances sharing a PostgreSQL store: the writer NOTIFYs, readers LISTEN.

The leader sends one NOTIFY per committed batch (inside the batch's transaction, so PostgreSQL
delivers it at commit and never for a batch rolled back), with a small JSON payload: tasks and
workers written, the newest task timestamp. A follower listens on a connection of its own that
does nothing else, and hears about a write within milliseconds instead of at its next poll.

The channel is per schema (``celeriac.<schema>``): instances watching other clusters in other
schemas of the same database do not wake each other. A listener whose connection drops says so
(``listening`` False: its owner polls meanwhile), reconnects with a backoff, and reports a
change after each reconnect, since a NOTIFY sent while it was away is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["ChangeListener", "channel_for", "long_lived_connection", "payload"]

log = logging.getLogger("celeriac.store.postgres")

#: PostgreSQL's identifier limit (NAMEDATALEN - 1); a channel name must fit it.
_MAX_CHANNEL = 63
BACKOFF_MAX_S = 5.0
#: How often a listening loop with nothing to hear looks at close().
_WAIT_S = 0.5


def long_lived_connection(url: str, name: str) -> psycopg.Connection[Any]:
    """A connection kept open for hours (the listener's, the leader's lock): TCP keepalives make
    a dead server or network show within seconds instead of when the kernel gives up."""
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=5,
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
        application_name=name,
    )  # fmt: skip


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the store in ``schema``."""
    name = f"celeriac.{schema}"
    if len(name.encode()) > _MAX_CHANNEL:
        name = "celeriac." + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return name


def payload(tasks: int, workers: int, newest: float | None) -> str:
    """What a batch's NOTIFY says: a few dozen bytes, far below the 8000-byte limit."""
    return json.dumps({"tasks": tasks, "workers": workers, "newest": newest})


def parse(text: str | None) -> dict[str, Any]:
    """A NOTIFY's payload; {} for a catch-up call or anything unreadable."""
    if not text:
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


class ChangeListener:
    """LISTENs on ``channel`` on a thread and connection of its own; calls ``on_change`` with
    each payload (parsed), and with {} after every (re)connect. ``scrub`` takes secrets out of
    error texts before they are logged."""

    def __init__(
        self,
        url: str,
        channel: str,
        on_change: Callable[[dict[str, Any]], None],
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._url = url
        self.channel = channel
        self._on_change = on_change
        self._scrub = scrub
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.listening = False
        self.heard = 0  # notifications received
        self.reconnects = 0
        self._trouble: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="celeriac-listen", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _WAIT_S + 5)
        self.listening = False

    def _run(self) -> None:
        backoff = 0.0
        connected_before = False
        while not self._stop.is_set():
            try:
                conn = self._conn = long_lived_connection(self._url, "celeriac-listen")
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.listening = True
                backoff = 0.0
                if connected_before:
                    self.reconnects += 1
                    log.info("listening for the leader's writes again (%s)", self.channel)
                connected_before = True
                self._trouble = None
                self._changed({})  # whatever was written while nobody listened
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=_WAIT_S):
                        self.heard += 1
                        self._changed(parse(note.payload))
                        if self._stop.is_set():
                            break
            except psycopg.Error as exc:
                self.listening = False
                lines = str(exc).strip().splitlines()
                reason = self._scrub(lines[0] if lines else type(exc).__name__)
                if reason != self._trouble:
                    self._trouble = reason
                    log.warning(
                        "not listening for the leader's writes (%s): %s; polling the store "
                        "meanwhile", self.channel, reason,
                    )  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2 or 0.2)
            finally:
                self.listening = False
                old, self._conn = self._conn, None
                if old is not None:
                    old.close()

    def _changed(self, note: dict[str, Any]) -> None:
        try:
            self._on_change(note)
        except Exception:  # the callback's bug must not end the listening
            log.exception("a store change could not be handled")
