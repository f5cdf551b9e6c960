"""One watched Celery cluster: its app, event source, live state, store and control.

The web layer holds a Cluster and nothing else; the Cluster wires the one-way flow
broker -> events -> state -> store, and owns the lifecycle of every part.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery

from celeriac.broker import broker_url
from celeriac.control import INSPECT_ALWAYS, INSPECT_DETAIL, Control
from celeriac.enable_events import EventsSwitch
from celeriac.events.base import EventSource
from celeriac.leader import (
    FOLLOWER,
    Leadership,
    is_database_url,
    leadership_for,
    open_shared_store,
)
from celeriac.settings import Settings, SettingsError, redact_url
from celeriac.state import State
from celeriac.store.base import TaskStore
from celeriac.store.location import db_path
from celeriac.store.memory import MemoryStore

log = logging.getLogger("celeriac")


#: How long a plain /api/workers leaves alone a worker that did not answer an inspect.
SILENT_RETRY_S = 30.0


class BrokerUnreachable(RuntimeError):
    pass


def load_app(settings: Settings, taken: Sequence[Celery] = ()) -> Celery:
    """The Celery app: imported like ``celery -A`` does, or a bare one for the broker given.
    An app another cluster already uses (``taken``: two clusters running the same code) is
    copied, never reconfigured under the other's feet."""
    if settings.app:
        from celery.app.utils import find_app

        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            app = find_app(settings.app)
        except Exception as exc:
            raise SettingsError(f"app: cannot load {settings.app!r}: {exc}") from None
        if not isinstance(app, Celery):
            raise SettingsError(f"app: {settings.app!r} is not a Celery app")
        if any(app is other for other in taken):
            app = separate_app(app)
    else:
        app = Celery("celeriac", set_as_current=False)
    return configure_app(app, settings)


def separate_app(app: Celery) -> Celery:
    """A new app with ``app``'s configuration and its tasks bound to the new one, so that
    setting its broker, or applying one of its tasks, never touches ``app``'s cluster."""
    copy = Celery(app.main, set_as_current=False)
    copy.conf.update(dict(app.conf.items()))
    for name, task in list(app.tasks.items()):
        if name.startswith("celery."):
            continue  # the new app has its own built-in tasks
        cls = type(task)
        bound: Any = type(
            cls.__name__, (cls,), {"__module__": cls.__module__, "app": copy, "_app": copy}
        )
        bound.bind(copy)
        copy.tasks.register(bound())
    return copy


def configure_app(app: Celery, settings: Settings) -> Celery:
    """Apply the flags that override the app's own configuration.

    Celery reads ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (often left in the
    environment for the workers) before its own settings, so a flag set only there would lose
    to them: the broker's read and write URLs (see ``celeriac/broker.py``) and the app's
    backend URL, which Celery reads first, carry the flags instead."""
    if settings.broker:
        app.conf.broker_url = settings.broker
        app.conf.broker_read_url = app.conf.broker_write_url = settings.broker
    if settings.result_backend:
        app.conf.result_backend = settings.result_backend
        app.backend_cls = settings.result_backend  # read before the variable
    if not broker_url(app):
        raise SettingsError("broker: no broker URL (give --broker or CELERIAC_BROKER)")
    app.conf.broker_connection_retry_on_startup = True
    return app


def open_store(settings: Settings, broker_url: str) -> TaskStore:
    """SQLite at ``--db`` or at the cluster's own file in the user's data directory; memory
    only with ``--db memory``. Raises StoreError (one line) when the file cannot be used."""
    if is_database_url(settings.db):  # several instances may share it: celeriac/leader.py
        from celeriac.store.pg_schema import ensure_schema

        ensure_schema(str(settings.db))  # one of several clusters: its schema must exist
        return open_shared_store(settings)
    path = db_path(settings.db, broker_url)
    if path is None:
        return MemoryStore(settings.max_tasks, max_age=settings.max_age)
    from celeriac.store.sqlite import SqliteStore

    return SqliteStore(
        path,
        max_tasks=settings.max_tasks,
        max_age=settings.max_age,
        writer_process=settings.writer_process,
    )


def open_source(settings: Settings, app: Celery, state: State, control: Control) -> EventSource:
    """The fastest reader that speaks the broker's transport; Celery's receiver otherwise."""
    with app.connection_for_read() as conn:
        transport = conn.transport.driver_type
        url = conn.as_uri(include_password=True)
        options = dict(conn.transport_options or {})
    if transport == "redis":
        from celeriac.events.redis import RedisEventSource

        return RedisEventSource(
            url,
            state.apply,
            wake=control.wake_workers,
            key_prefix=str(options.get("global_keyprefix", "")),
        )
    if transport == "amqp":
        from celeriac.events.amqp import AmqpEventSource, committing

        # A stable queue keeps what is not acked: ack only what the store has committed.
        return AmqpEventSource(
            app, state.apply, queue_name=settings.event_queue, wake=control.wake_workers,
            ack_when=committing(state.store) if settings.event_queue else None,
        )  # fmt: skip
    from celeriac.events.kombu import KombuEventSource

    return KombuEventSource(app, state.apply, wake=control.wake_workers)


class Cluster:
    def __init__(
        self, settings: Settings, app: Celery | None = None, name: str | None = None
    ) -> None:
        self.settings = settings
        self.name = name  # with several clusters (celeriac/clusters.py), its --cluster name
        self.app = configure_app(app, settings) if app is not None else load_app(settings)
        self.broker_url = redact_url(broker_url(self.app))
        self.store = open_store(settings, broker_url(self.app))
        self.state = State(self.store)
        self.control = Control(self.app, settings.inspect_timeout_s)
        self.source = open_source(settings, self.app, self.state, self.control)
        # On a shared store only the elected instance ingests; None: this one always does.
        self.leadership: Leadership | None = leadership_for(self)
        # Flower's --enable_events: workers without -E send task events (an ingesting
        # instance asks; a follower's leader does it for it).
        self.events_switch = (
            EventsSwitch(self.app, wanted=lambda: self.role != FOLLOWER, label=name or "")
            if settings.enable_events
            else None
        )
        self.store_changes = 0  # a follower counts the leader's writes here (live pages)
        # Worker details from inspect replies, kept across refreshes: {hostname: info}.
        self.worker_info: dict[str, dict[str, Any]] = {}
        # Workers that did not answer an inspect, and when: a plain /api/workers does not
        # wait on them again for SILENT_RETRY_S (refresh=true always asks).
        self._silent: dict[str, float] = {}
        # When no worker is known at all, a broadcast must wait out the whole inspect timeout
        # to find any (one without events, say); do that at most once per SILENT_RETRY_S.
        self._searched_at: float | None = None
        self.started_at = time.time()

    # -- lifecycle --------------------------------------------------------------------------
    def check_broker(self, timeout: float = 5.0) -> None:
        """Fail fast with one clear line when the broker cannot be reached at start-up."""
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as exc:
            raise BrokerUnreachable(
                f"cannot connect to broker {self.broker_url}: {type(exc).__name__}: {exc}"
            ) from None

    def start(self) -> None:
        self.store.start()
        if self.leadership is not None:
            self.leadership.start()  # starts the source whenever elected
        else:
            self.source.start()
        if self.events_switch is not None:
            self.events_switch.start()
        log.info("watching %s%s", self.broker_url, f" (cluster {self.name})" if self.name else "")
        path = getattr(self.store, "path", None)
        if isinstance(self.store, MemoryStore):
            log.info("task history in memory only (--db memory): a restart forgets it")
        elif path:
            log.info("task history in %s (%d tasks)", path, self.store.count())

    @property
    def role(self) -> str:
        """ "leader" or "follower" on a shared store, "single" otherwise."""
        return "single" if self.leadership is None else self.leadership.role

    def close(self) -> None:
        if self.leadership is not None:
            self.leadership.close()
        if self.events_switch is not None:
            self.events_switch.close()
        self.source.close()
        self.control.close()
        self.store.close()

    # -- workers ----------------------------------------------------------------------------
    def known_workers(self) -> set[str]:
        return set(self.worker_info) | set(self.state.worker_status())

    def is_worker(self, name: str | None) -> bool:
        return bool(name) and name in self.known_workers()

    async def refresh_workers(self, workername: str | None = None) -> None:
        """Inspect the cluster and merge the replies into ``worker_info``."""
        if workername:
            targets: list[str] | None = [workername]
            expected: int | None = 1
            methods: tuple[str, ...] = INSPECT_ALWAYS + INSPECT_DETAIL
        else:
            # Ask exactly the workers we know are alive, and wait until each has answered: a
            # refresh takes milliseconds instead of the whole inspect timeout. Naming them
            # matters: a worker the events do not show (no heartbeats, or not seen yet) would
            # answer a broadcast too, count towards the replies awaited, and a known worker
            # would be missed. With none known we must wait out the timeout to find any.
            online = sorted(self.state.online_workers())
            targets = online or None
            expected = len(online) or None
            methods = INSPECT_ALWAYS
        replies = await self.control.inspect(methods, targets, expected)
        self._merge(replies)
        self._note_silent(targets or [], replies)
        self._purge_offline()

    async def fill_workers(self) -> None:
        """Inspect the workers seen online in events but never inspected yet.

        Flower inspects a worker when its ``worker-online`` event arrives; asking lazily here,
        before answering from ``worker_info``, gives the same answers off the event thread.
        """
        now = time.monotonic()
        quiet = {w for w, since in self._silent.items() if now - since < SILENT_RETRY_S}
        online = set(self.state.online_workers())
        if not self.worker_info:
            if online - quiet:
                await self.refresh_workers()
            elif not online and (
                self._searched_at is None or now - self._searched_at >= SILENT_RETRY_S
            ):
                self._searched_at = now
                await self.refresh_workers()
            return
        missing = sorted(online - set(self.worker_info) - quiet)
        if missing:
            replies = await self.control.inspect(INSPECT_ALWAYS, missing, len(missing))
            self._merge(replies)
            self._note_silent(missing, replies)

    def _note_silent(self, asked: list[str], replies: dict[str, Any]) -> None:
        now = time.monotonic()
        for worker in asked:
            if worker in replies:
                self._silent.pop(worker, None)
            else:
                self._silent[worker] = now

    async def refresh_queues(self) -> None:
        """Re-read what the online workers consume (add/cancel-consumer change it)."""
        await self.fill_workers()
        online = sorted(set(self.state.online_workers()) & set(self.worker_info))
        if online:
            replies = await self.control.inspect(("active_queues",), online, len(online))
            self._merge(replies, stamp=False)

    def _merge(self, replies: dict[str, dict[str, Any]], stamp: bool = True) -> None:
        now = time.time()
        for worker, info in replies.items():
            entry = self.worker_info.setdefault(worker, {})
            entry.update(info)
            if stamp or "timestamp" not in entry:
                entry["timestamp"] = now

    def _purge_offline(self) -> None:
        limit = self.settings.purge_offline_workers
        if limit is None:
            return
        now = time.time()
        for name in list(self.worker_info):
            since = self.state.offline_since(name)
            if since is not None and now - since > limit:
                self.worker_info.pop(name, None)
                self.state.forget_worker(name)

    def worker_status(self) -> dict[str, bool]:
        status = self.state.worker_status()
        self._purge_offline()
        if self.settings.purge_offline_workers is not None:
            status = {k: v for k, v in status.items() if k in self.state.worker_status()}
        return status
