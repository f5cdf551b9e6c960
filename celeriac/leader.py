"""Which of several celeriac instances on one PostgreSQL database ingests a cluster's events.

Exactly one instance per watched cluster reads the events and writes the store: the one holding
a session-level PostgreSQL advisory lock whose key is derived from the cluster's identity (the
broker URL without its credentials, see ``store/location.py``). The lock belongs to one
connection that does nothing else; when the leader dies its connection drops, PostgreSQL
releases the lock, and the next follower to poll (every ``interval`` seconds) takes it and
starts ingesting: the hand-over takes about one interval. A leader that loses its connection
stops ingesting at once, since another instance may already hold the lock.

Followers serve the API and the UI from the store (tasks) and from the workers' last state the
leader stores with every heartbeat. They hear of each batch the leader commits through
PostgreSQL's LISTEN/NOTIFY (``store/pg_notify.py``) and refresh the live pages at once; while
the listening connection is down they poll the store every ``interval`` instead (and every
``follower_poll`` seconds anyway, a safety net).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.broker import broker_url
from celeriac.settings import Settings, redact_url
from celeriac.store.base import StoreError

if TYPE_CHECKING:
    import psycopg

    from celeriac.cluster import Cluster
    from celeriac.store.postgres import PostgresStore

__all__ = [
    "FOLLOWER",
    "LEADER",
    "Leadership",
    "is_database_url",
    "leadership_for",
    "lock_key",
    "open_shared_store",
]

log = logging.getLogger("celeriac")

LEADER, FOLLOWER = "leader", "follower"


def is_database_url(db: str | None) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return bool(db) and str(db).strip().lower().startswith(("postgresql://", "postgres://"))


def open_shared_store(settings: Settings) -> PostgresStore:
    """The PostgreSQL store at ``settings.db``; StoreError (one line, no password) if it
    cannot be used, psycopg included."""
    assert settings.db is not None
    try:
        from celeriac.store.postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"task database {redact_url(settings.db)}: PostgreSQL needs psycopg 3 "
            f"(pip install 'celeriac[postgres]'): {exc}"
        ) from None
    return PostgresStore(settings.db, max_tasks=settings.max_tasks, max_age=settings.max_age)


def leadership_for(cluster: Cluster) -> Leadership | None:
    """For a cluster on a shared (PostgreSQL) store, the election that decides whether this
    instance ingests; None for a store of its own, which always ingests."""
    url = cluster.settings.db
    if url is None or not is_database_url(url):
        return None
    from celeriac.cluster import open_source
    from celeriac.store.location import cluster_identity
    from celeriac.store.pg_schema import schema_of
    from celeriac.store.postgres import PostgresStore

    store = cluster.store
    if not isinstance(store, PostgresStore):  # a test's own store
        return None
    identity = cluster_identity(broker_url(cluster.app))
    schema = schema_of(url)
    if schema:  # one of several clusters (--cluster): the lock is its store's, not the broker's
        identity = f"{identity} [{schema}]"

    started = False  # led before: a later term follows a gap in this instance's ingest
    followed = False  # another instance held the lock in a round of this one's
    marker: int | None = None  # the store's change marker, as a follower last saw it
    changed_at: float | None = None  # when it last moved

    def elected() -> None:
        nonlocal started
        # A take-over, with a gap: this instance followed another, or led before. Not the
        # first instance's first term: its listener reads the marker before any election.
        if started or followed:
            if changed_at is not None:  # the gap, as this follower saw it
                gap = f"the previous leader last wrote {time.time() - changed_at:.1f} s ago"
            else:
                gap = "this instance saw no write of the previous leader while it followed"
            log.warning(
                "took over ingest for %s: %s; events published since then and before this "
                "instance subscribes are missed unless the broker kept them (a stable "
                "--event-queue on RabbitMQ)",
                identity, gap,
            )  # fmt: skip
        store.set_writing(True)
        if started:  # a source is started once: a new one for every term
            cluster.source = open_source(
                cluster.settings, cluster.app, cluster.state, cluster.control
            )
        started = True
        cluster.source.start()

    def deposed(graceful: bool) -> None:
        cluster.source.close()
        if graceful:  # still holding the lock: write what was ingested before letting go
            store.flush(timeout=30)
        # Else another instance may lead already, and writing older versions of its tasks
        # would undo its work: what was not written is dropped (and logged by the store).
        store.set_writing(False)

    def refresh() -> None:
        nonlocal marker, changed_at
        cluster.state.restore_workers(store.workers())
        now = store.change_marker()
        if now != marker:  # the leader wrote: live pages refresh (celeriac/web/hub.py)
            if marker is not None:
                changed_at = time.time()
            marker = now
            cluster.store_changes += 1

    def heard(note: dict[str, Any]) -> None:
        """The leader committed a batch (its NOTIFY), or the listener (re)connected ({}):
        on the listener's thread, before the live pages' hub hears of it."""
        nonlocal changed_at
        if not note:  # what may have been missed while nobody listened
            refresh()
            return
        if note.get("workers"):
            cluster.state.restore_workers(store.workers())
        if note.get("tasks"):
            changed_at = time.time()
            cluster.store_changes += 1

    poll_every = cluster.settings.follower_poll
    polled = float("-inf")

    def follow() -> None:
        """Every election round: poll the store, unless its changes are heard as they are
        committed (then only every ``follower_poll`` seconds, CELERIAC_FOLLOWER_POLL)."""
        nonlocal polled, followed
        followed = True
        now = time.monotonic()
        if store.listening and now - polled < poll_every:
            return
        polled = now
        refresh()

    store.set_writing(False)  # until elected
    store.watch(heard)  # first: the hub's own watcher runs after this one
    return Leadership(url, identity, elected, deposed, follow)


def lock_key(identity: str) -> int:
    """A signed 64-bit advisory lock key for a cluster identity (stable across versions)."""
    digest = hashlib.sha256(b"celeriac-leader:" + identity.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    """Contends for the lock (the first round in :meth:`start`, then on a thread of its own);
    calls ``on_elected`` when it gets it and ``on_deposed(graceful)`` when it loses it
    (connection lost: False) or at :meth:`close` while leading (True: the lock is released
    only after it returns). Callbacks run one at a time; ``on_follow`` runs every
    ``interval`` while following."""

    def __init__(
        self,
        url: str,
        identity: str,
        on_elected: Callable[[], None],
        on_deposed: Callable[[bool], None],
        on_follow: Callable[[], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._url = url
        self.identity = identity
        self.key = lock_key(identity)
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._on_follow = on_follow
        self.interval = interval
        self._conn: psycopg.Connection[Any] | None = None  # holds the lock while leading
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading = False
        self.since = time.time()  # when the role last changed
        self.elections = 0
        self._trouble: str | None = None  # the problem last logged

    @property
    def role(self) -> str:
        return LEADER if self.leading else FOLLOWER

    def start(self) -> None:
        if self._thread is None:
            # The first round now: an instance that can lead ingests before it serves, as one
            # with a store of its own does (events sent right after start are not missed).
            self._round()
            self._thread = threading.Thread(target=self._run, name="celeriac-leader", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop contending; a leader stops ingesting and releases the lock (by closing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.leading:
            self._depose("stopping", graceful=True)
        self._drop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._round()

    def _round(self) -> None:
        import psycopg

        from celeriac.store.postgres import scrub

        try:
            self._step()
            self._trouble = None
        except psycopg.Error as exc:
            lines = str(exc).strip().splitlines()
            reason = scrub(lines[0] if lines else type(exc).__name__, self._url)
            self._drop()
            if self.leading:
                self._depose(f"lost the database connection ({reason})", graceful=False)
            self._complain(f"cannot reach the database to elect a leader: {reason}")
        except Exception as exc:  # a callback failed: never let the thread die
            self._complain(f"{type(exc).__name__}: {scrub(str(exc), self._url)}")

    def _complain(self, message: str) -> None:
        """Log a problem once, not once per round while it lasts."""
        if message != self._trouble:
            self._trouble = message
            log.warning("leader election for %s: %s", self.identity, message)

    def _step(self) -> None:
        from celeriac.store.pg_notify import long_lived_connection

        if self._conn is None:
            self._conn = long_lived_connection(self._url, "celeriac-leader")
        if self.leading:
            self._conn.execute("SELECT 1")  # still connected, so still holding the lock
            return
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if row is not None and row[0]:
            self.leading = True
            self.since = time.time()
            self.elections += 1
            log.info("leader for %s: ingesting events", self.identity)
            try:
                self._on_elected()
            except Exception:
                # Not ingesting: let another instance (or this one, next round) try.
                self._depose("could not start ingesting", graceful=False)
                self._drop()
                raise
        elif self._on_follow is not None:
            self._on_follow()

    def _depose(self, why: str, graceful: bool) -> None:
        self.leading = False
        self.since = time.time()
        log.warning("no longer leader for %s (%s): ingest stopped", self.identity, why)
        self._on_deposed(graceful)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
