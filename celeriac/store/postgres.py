"""The task store on PostgreSQL: one batching writer connection, a pool of readers.

Same shape and same answers as :class:`~celeriac.store.sqlite.SqliteStore`, and the same
batching writer (:class:`~celeriac.store.writer.BatchingStore`): ``put`` only files the live
record in a pending dict, and a writer thread writes each batch in one transaction: COPY into a
temporary table, then one ``INSERT ... ON CONFLICT (uuid) DO UPDATE`` from it. The
exact per-state counts live in ``task_counts``, updated in the same transaction, so ``count``
and ``count_by_state`` never scan, and read the same from every instance sharing the database.

Several celeriac instances may share one database (see ``celeriac.leader``): only the leader
writes; :meth:`PostgresStore.set_writing` turns a follower's writer (and retention) on or off.
Readers always read the database, so a follower answers from what the leader wrote.

The database URL's password never appears in a log line, a ``repr`` or an error message: every
message goes through :func:`scrub`. A failed write goes back into the pending dict for the next
try (a lost connection is reopened), logged once per kind, counted in :meth:`stats`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from celeriac.constants import FINAL_STATES
from celeriac.settings import redact_url
from celeriac.store import pg_aggregates
from celeriac.store.aggregates import Bucket, FailureGroup, TypeBucket
from celeriac.store.base import StoreError, TaskQuery, TaskRecord, plain
from celeriac.store.pg_migrations import (
    COLUMN_TYPES,
    MIGRATIONS,
    Migration,
    MigrationError,
    migrate,
)
from celeriac.store.pg_notify import ChangeListener, channel_for, payload
from celeriac.store.pg_search import search_condition
from celeriac.store.query import checked_page
from celeriac.store.search import Node, compile_search, parse_search
from celeriac.store.writer import OVERLAY_MAX, BatchingStore, Live

__all__ = ["PostgresStore", "StoreError"]

log = logging.getLogger(__name__)

COLUMNS = tuple(name for name, _ in COLUMN_TYPES)
_KINDS = tuple(kind for _, kind in COLUMN_TYPES)
_COLS = ", ".join(COLUMNS)
_SELECT = f"SELECT {_COLS}, extra FROM tasks"
_GET = (
    f"SELECT {_COLS}, extra, ARRAY(SELECT c.uuid FROM tasks AS c WHERE c.parent_id = t.uuid "
    "AND c.uuid <> t.uuid ORDER BY c.id) FROM tasks AS t WHERE t.uuid = %s"
)
_FINAL = tuple(sorted(s.lower() for s in FINAL_STATES))
_STATE_AT = COLUMNS.index("state")
_TIME_AT = COLUMNS.index("timestamp")
_PRUNE_BATCH = 500  # rows per retention transaction: short, so a flush never waits long
_STREAM_ROWS = 500  # rows per fetch when a search is checked in Python while reading
_NAMES_TTL = 2.0  # seconds a follower trusts its copy of task_names
#: An unfiltered page this deep is found in its index first (see PostgresStore._stored).
_DEEP = 1000

Row = tuple[Any, ...]

_BATCH_TABLE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS celeriac_batch (ord integer, "
    + ", ".join(f"{n} {'text' if k is str else 'double precision' if k is float else 'bigint'}"
                for n, k in COLUMN_TYPES)
    + ", extra text) ON COMMIT DELETE ROWS"
)  # fmt: skip
_UPSERT = (
    f"INSERT INTO tasks ({_COLS}, extra) SELECT {_COLS}, extra FROM celeriac_batch ORDER BY ord "
    "ON CONFLICT (uuid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "extra"))
    + f" WHERE ({', '.join('tasks.' + c for c in (*COLUMNS[1:], 'extra'))}) IS DISTINCT FROM "
    f"({', '.join('excluded.' + c for c in (*COLUMNS[1:], 'extra'))})"
)
_COUNT_ADD = (
    "INSERT INTO task_counts (state, n) SELECT * FROM unnest(%s::text[], %s::bigint[]) "
    "ON CONFLICT (state) DO UPDATE SET n = task_counts.n + excluded.n"
)


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (libpq may quote parts of the URL back)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _snapshot(record: TaskRecord) -> Row:
    """The record as a row: ``(*COLUMNS, extra)``. A value whose type is not its column's goes
    into its column as best it can (text, a number, or NULL) and as itself into ``extra``."""
    row = [record.get(c) for c in COLUMNS]
    extra: dict[str, Any] | None = None
    for i, value in enumerate(row):
        if value is None:
            continue
        kind = _KINDS[i]
        if type(value) is kind and (
            kind is float
            or (isinstance(value, str) and "\x00" not in value)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
        ):
            continue
        value = plain(value)
        if extra is None:
            extra = {}
        extra[COLUMNS[i]] = value
        if kind is str:  # the text a search or a filter sees: the value's str, NULs dropped
            row[i] = str(value).replace("\x00", "")
        elif kind is float and type(value) is int and abs(value) < 2**53:
            row[i] = float(value)
        elif kind is int and type(value) is int:
            row[i] = value  # a bool made an int
        else:
            row[i] = None
    row.append(None if extra is None else json.dumps(extra))
    return tuple(row)


def _record(row: Sequence[Any]) -> TaskRecord:
    record = dict(zip(COLUMNS, row[:-1], strict=True))
    if row[-1] is not None:
        record.update(json.loads(row[-1]))
    return record


def _sql_order(q: TaskQuery) -> str:
    """The ORDER BY of a query: see :meth:`PostgresStore.query` (each read off an index)."""
    desc = q.descending or q.sort_by is None
    direction, nulls = ("DESC", "NULLS LAST") if desc else ("ASC", "NULLS FIRST")
    if q.sort_by is None:  # newest first; ties (rare: float times) by insertion
        return f"timestamp {direction} {nulls}, id {direction}"
    key = "lower(name)" if q.sort_by == "name" else q.sort_by  # name: ASCII case folded
    return f"{key} {direction} {nulls}, uuid {direction}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _Live(Live):
    """An unwritten task as the database will give it back, with the values its columns
    will hold (``row``) for ordering it among written ones."""

    row: Row

    @classmethod
    def of(cls, record: TaskRecord) -> _Live:
        row = _snapshot(record)
        live = cls(_record(row))
        live.row = row
        return live


def _py_order(q: TaskQuery) -> tuple[Callable[[TaskRecord], tuple[Any, ...]], bool]:
    """:func:`_sql_order` in Python, over records as the database gives them, and its
    direction. An unwritten task sorts after every written one of the same time (it will
    get a higher id)."""
    if q.sort_by is None:
        at = COLUMNS.index("timestamp")

        def newest(r: TaskRecord) -> tuple[Any, ...]:
            v = _columns(r)[at]
            return (v is not None, v or 0.0, type(r) is _Live)

        return newest, True
    at, fold = COLUMNS.index(q.sort_by), q.sort_by == "name"

    def by_key(r: TaskRecord) -> tuple[Any, ...]:
        v = _columns(r)[at]
        if v is None:
            return (False, "", r.get("uuid") or "")
        return (True, v.translate(_ASCII_LOWER) if fold else v, r.get("uuid") or "")

    return by_key, q.descending


def _filters(q: TaskQuery) -> tuple[list[str], list[Any]]:
    """The conditions of ``q``'s filters (not its search) and their parameters."""
    where: list[str] = []
    params: list[Any] = []
    for column, wanted in (("state", q.state), ("name", q.taskname), ("worker", q.workername)):
        if wanted:
            where.append(f"lower({column}) = %s")
            params.append(wanted.lower())
    # Inclusive bounds, and a task not received yet is not filtered out (Flower's rule).
    if q.received_start is not None:
        where.append("(received IS NULL OR received >= %s)")
        params.append(q.received_start)
    if q.received_end is not None:
        where.append("(received IS NULL OR received <= %s)")
        params.append(q.received_end)
    return where, params


def _columns(record: TaskRecord) -> Row:
    """The values the database holds in the columns for ``record``."""
    return record.row if type(record) is _Live else _snapshot(record)[:-1]


class PostgresStore(BatchingStore):
    """Task history in a PostgreSQL database. See the module docstring for the model.

    ``max_tasks`` and ``max_age`` (seconds since a task's last event) bound the history: the
    writer deletes the oldest finished tasks beyond them, a few hundred per transaction, between
    flushes. ``max_pending`` bounds the tasks waiting for the writer: a put waits (up to
    ``writer.THROTTLE_WAIT``) for the writer to take a batch that big. ``migrations`` is for
    tests of upgrades.
    """

    _log = log

    def __init__(
        self,
        url: str,
        max_tasks: int | None = None,
        max_age: float | None = None,
        flush_interval: float = 0.2,
        *,
        readers: int = 8,
        migrations: Sequence[Migration] = MIGRATIONS,
        max_pending: int = 5_000,
    ) -> None:
        self._url = url
        self.path = redact_url(url)  # where the history lives, for logs: no password
        self.where = f"task database {self.path}"
        self._init_writer(max_tasks, max_age, flush_interval, max_pending)
        self._names: frozenset[str] = frozenset()  # put here, maybe not stored yet
        self._stored_names: frozenset[str] = frozenset()
        self._names_read = 0.0
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._conn = self._connect()
            migrate(self._conn, migrations)
            self._prepare(self._conn)
            row = self._conn.execute("SELECT current_schema()").fetchone()
            #: Where each committed batch is announced (see pg_notify.py): per schema.
            self.channel = channel_for(str(row[0]) if row else "public")
            self._stored_names = self._read_names(self._conn)
            self._known_count = self._count_on(self._conn)
        except (psycopg.Error, MigrationError) as exc:
            if self._conn is not None:
                self._conn.close()
            raise StoreError(f"{self.where}: {self._reason(exc)}") from None
        self._names = self._stored_names
        self._names_read = time.monotonic()
        self._watchers: list[Callable[[dict[str, Any]], None]] = []
        self._listener: ChangeListener | None = None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=readers,
            kwargs={"autocommit": True},
            configure=self._configure_reader,
            name="celeriac-readers",
            open=True,
            timeout=30,
        )

    def __repr__(self) -> str:
        return f"<PostgresStore {redact_url(self._url)}>"

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, MigrationError):
            return str(exc)
        text = str(exc).strip() or type(exc).__name__
        return f"cannot use it: {scrub(text, self._url)}"

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    @staticmethod
    def _prepare(conn: psycopg.Connection[Any]) -> None:
        conn.execute(_BATCH_TABLE)

    @staticmethod
    def _configure_reader(conn: psycopg.Connection[Any]) -> None:
        # Rows are appended in time order, so each (column, timestamp) index reads the heap
        # almost in order, and the hot part of the table is cached: the default cost of a
        # random page (4) made the planner walk the timestamp index with a filter instead of
        # the filter's own index (3x slower at 200k tasks, measured). This session only.
        conn.execute("SET random_page_cost = 1.1")

    # --- lifecycle -------------------------------------------------------------------------

    def _close_connections(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()
        if self._conn is not None:
            self._conn.close()

    def set_writing(self, writing: bool) -> None:
        """Whether this instance writes (the leader) or only reads (a follower). A follower
        drops what it was given to write: the leader writes those tasks."""
        self._writing = writing
        if not writing:
            with self._lock:
                dropped = len(self._pending)
                self._pending.clear()
                self._pending_workers.clear()
            if dropped:
                log.warning("%d unwritten tasks dropped: another instance writes now", dropped)
        self._wake.set()

    @property
    def writing(self) -> bool:
        return self._writing

    def watch(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        """Call ``on_change`` (on the listener's thread) whenever another instance commits a
        batch here, with its NOTIFY payload, and with {} each time the listener (re)connects;
        never while this instance writes. The first watcher starts the listener (its own
        connection, see pg_notify.py), :meth:`close` stops it."""
        with self._lock:
            self._watchers.append(on_change)
            if self._listener is None and not self._closed:
                self._listener = ChangeListener(
                    self._url, self.channel, self._heard, lambda text: scrub(text, self._url)
                )
                self._listener.start()

    @property
    def listening(self) -> bool:
        """Whether changes are heard as they are committed (else watchers should poll)."""
        return self._listener is not None and self._listener.listening

    def _heard(self, note: dict[str, Any]) -> None:
        if self._writing:
            return  # our own write: the live state has it already
        for on_change in list(self._watchers):
            on_change(note)

    # --- ingest side -----------------------------------------------------------------------

    def _note_names(self, record: TaskRecord) -> None:
        name = record.get("name")
        # Only text is a name: an event may carry anything (a list, a number) there.
        if name and type(name) is str and name not in self._names:
            with self._lock:  # rare (a new name), and task_types adds too: no lost update
                self._names = self._names | {name}

    # --- writer thread ---------------------------------------------------------------------

    def _write_batch(
        self, batch: dict[str, TaskRecord], workers: dict[str, dict[str, Any]]
    ) -> None:
        rows = [_snapshot(record) for record in batch.values()]
        names = {n for r in batch.values() if type(n := r.get("name")) is str and n}
        self._write(rows, workers, frozenset(names))

    def _describe_error(self, exc: Exception) -> tuple[str, str]:
        kind = type(exc).__name__
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            kind = f"{kind}({sqlstate})"
        return kind, scrub(str(exc).strip(), self._url)

    def _write_failed(self, exc: Exception) -> None:
        super()._write_failed(exc)
        if self._conn is not None and self._conn.broken:
            self._conn.close()
            self._conn = None

    def _writer(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._prepare(self._conn)
        return self._conn

    def _write(
        self, rows: list[Row], workers: dict[str, dict[str, Any]], names: frozenset[str]
    ) -> None:
        conn = self._writer()
        tally: Counter[str] = Counter()
        with conn.transaction():
            # Delivered at commit, once for the batch: followers refresh (pg_notify.py).
            newest = max((r[_TIME_AT] for r in rows if r[_TIME_AT] is not None), default=None)
            conn.execute(
                "SELECT pg_notify(%s, %s)", (self.channel, payload(len(rows), len(workers), newest))
            )
            if rows:
                uuids = [r[0] for r in rows]
                old = conn.execute(
                    "SELECT state FROM tasks WHERE uuid = ANY(%s)", (uuids,)
                ).fetchall()
                tally.subtract(r[0] or "" for r in old)
                tally.update(r[_STATE_AT] or "" for r in rows)
                with conn.cursor() as cur, cur.copy(
                    f"COPY celeriac_batch (ord, {_COLS}, extra) FROM STDIN"
                ) as copy:
                    for i, row in enumerate(rows):
                        copy.write_row((i, *row))
                conn.execute(_UPSERT)
                changes = [(s, n) for s, n in tally.items() if n]
                if changes:
                    conn.execute(_COUNT_ADD, ([s for s, _ in changes], [n for _, n in changes]))
                self._known_count = self._count_on(conn)
            names = names - self._stored_names
            if names:
                conn.execute(
                    "INSERT INTO task_names (name) SELECT unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING",
                    (sorted(names),),
                )
            if workers:
                now = time.time()
                hosts = sorted(workers)
                conn.execute(
                    "INSERT INTO workers (hostname, info, updated) "
                    "SELECT h, i, %s FROM unnest(%s::text[], %s::text[]) AS w(h, i) "
                    "ON CONFLICT (hostname) DO UPDATE SET info = excluded.info, "
                    "updated = excluded.updated",
                    (now, hosts, [json.dumps(workers[h], default=str) for h in hosts]),
                )
        self._stored_names |= names

    def _prune(self, budget: float) -> None:
        """Delete the oldest finished tasks beyond the limits, in short transactions.

        At least one batch per writer cycle, so that retention keeps up under any ingest load,
        and more only within ``budget`` seconds, so that the next flush is not delayed.
        """
        deadline = time.monotonic() + budget
        while self._writing:
            try:
                victims: list[int] = []
                if self.max_age is not None:
                    victims = self._oldest_finished(_PRUNE_BATCH, time.time() - self.max_age)
                if not victims and self.max_tasks is not None:
                    excess = self._count_on(self._writer()) - self.max_tasks
                    if excess > 0:
                        victims = self._oldest_finished(min(_PRUNE_BATCH, excess))
                if not victims:
                    return
                self._delete(victims)
            except psycopg.Error as exc:
                self._write_failed(exc)
                return
            if time.monotonic() >= deadline:
                return

    def _oldest_finished(self, limit: int, before: float | None = None) -> list[int]:
        """ids of up to ``limit`` finished tasks, oldest first (one index range per state)."""
        conn = self._writer()
        sql = "SELECT timestamp, id FROM tasks WHERE lower(state) = %s"
        sql += " AND timestamp < %s" if before is not None else ""
        sql += " ORDER BY timestamp NULLS FIRST, id LIMIT %s"
        found: list[tuple[Any, int]] = []
        for state in _FINAL:
            params = (state, before, limit) if before is not None else (state, limit)
            found.extend(conn.execute(sql, params).fetchall())
        found.sort(key=lambda r: (r[0] is not None, r[0] or 0.0, r[1]))
        return [r[1] for r in found[:limit]]

    def _delete(self, ids: list[int]) -> None:
        conn = self._writer()
        with conn.transaction():
            gone = conn.execute(
                "DELETE FROM tasks WHERE id = ANY(%s) RETURNING state", (ids,)
            ).fetchall()
            tally = Counter(r[0] or "" for r in gone)
            conn.execute(_COUNT_ADD, (list(tally), [-n for n in tally.values()]))
            self._known_count = self._count_on(conn)
        self._pruned += len(gone)

    # --- readers ---------------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreError(f"the {self.where} is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {self._reason(exc)}") from None

    def get(self, uuid: str) -> TaskRecord | None:
        """The task as last put (even if not yet written), with its ``children``."""
        record = self._unwritten_record(uuid)
        if record is not None:
            record["children"] = self.children(uuid)
            return record
        # One round trip: the row and its children.
        with self._reader() as conn:
            row = conn.execute(_GET, (uuid,)).fetchone()
        if row is None:
            return None
        record = _record(row[:-1])
        record["children"] = self._with_pending_children(uuid, list(row[-1]))
        return record

    def get_many(self, uuids: Sequence[str]) -> dict[str, TaskRecord]:
        """The tasks among ``uuids`` that were put, without ``children``: the state's lookup
        for a whole batch of events, in one round trip instead of one per new task."""
        found: dict[str, TaskRecord] = {}
        rest: list[str] = []
        for uuid in uuids:
            live = self._unwritten_record(uuid)
            if live is not None:
                found[uuid] = live
            else:
                rest.append(uuid)
        if rest:
            with self._reader() as conn:
                rows = conn.execute(f"{_SELECT} WHERE uuid = ANY(%s)", (rest,)).fetchall()
            for row in rows:
                record = _record(row)
                found[row[0]] = record
        for record in found.values():
            record["children"] = []
        return found

    def children(self, uuid: str) -> list[str]:
        """Tasks whose parent_id is ``uuid``, in the order they were first stored."""
        sql = "SELECT uuid FROM tasks WHERE parent_id = %s AND uuid <> %s ORDER BY id"
        with self._reader() as conn:
            found = [r[0] for r in conn.execute(sql, (uuid, uuid))]
        return self._with_pending_children(uuid, found)

    @staticmethod
    def _read_names(conn: psycopg.Connection[Any]) -> frozenset[str]:
        return frozenset(r[0] for r in conn.execute("SELECT name FROM task_names"))

    def task_types(self) -> list[str]:
        """Every task name put here or stored by any instance (re-read every few seconds)."""
        if time.monotonic() - self._names_read > _NAMES_TTL:
            with self._reader() as conn:
                stored = self._read_names(conn)
            with self._lock:
                self._names = self._names | stored
            self._names_read = time.monotonic()
        return sorted(self._names)

    def count(self) -> int:
        """Tasks stored, counting those put but not written yet when they are few."""
        live = self._unwritten()
        with self._reader() as conn:
            written = self._known_count = self._count_on(conn)
            if not live or len(live) > OVERLAY_MAX:
                return written
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE uuid = ANY(%s)", (list(live),)
            ).fetchone()
        return written + len(live) - (int(row[0]) if row else 0)

    @staticmethod
    def _count_on(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT coalesce(sum(n), 0) FROM task_counts").fetchone()
        return int(row[0]) if row else 0

    def count_by_state(self) -> dict[str, int]:
        """Written tasks per state, from the counts the writer keeps: no scan."""
        with self._reader() as conn:
            rows = conn.execute("SELECT state, n FROM task_counts WHERE n > 0").fetchall()
        out: Counter[str] = Counter()
        for state, n in rows:
            out[state or "PENDING"] += n
        return dict(out)

    def change_marker(self) -> int:
        """A number that moves whenever any instance writes tasks: the identity sequence,
        which ``INSERT ... ON CONFLICT`` advances for updated rows too. A follower polls it to
        know when to refresh what it shows."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT last_value FROM pg_sequences WHERE schemaname = current_schema() "
                "AND sequencename = 'tasks_id_seq'"
            ).fetchone()
        return int(row[0] or 0) if row else 0

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every worker's last known state as put with :meth:`put_worker`."""
        with self._reader() as conn:
            rows = conn.execute("SELECT hostname, info FROM workers ORDER BY hostname")
            return {hostname: json.loads(info) for hostname, info in rows}

    def _live(self, record: TaskRecord) -> Live:
        return _Live.of(record)

    def _order(self, q: TaskQuery) -> tuple[Callable[[TaskRecord], tuple[Any, ...]], bool]:
        return _py_order(q)

    def _exclude(self, uuids: list[str]) -> list[str]:
        return uuids

    def _stored(
        self, q: TaskQuery, node: Node | None, exclude: list[str] | None = None
    ) -> list[TaskRecord]:
        """The written tasks matching ``q``, without those in ``exclude``."""
        where, params = _filters(q)
        search = None if node is None else search_condition(node)
        if search is not None:
            where.append(f"({search.sql})")
            params.extend(search.params)
        if exclude:  # a hashed lookup (PostgreSQL 15 hashes <> ALL of many constants)
            where.append("uuid <> ALL(%s)")
            params.append(exclude)
        condition = " AND ".join(where) or "true"
        order = _sql_order(q)
        offset = max(q.offset, 0)
        with self._reader() as conn:
            if search is not None and not search.exact:
                sql = f"{_SELECT} WHERE {condition} ORDER BY {order}"
                return self._checked(conn, sql, params, q, compile_search(node))
            if not where and offset >= _DEEP:
                # Unfiltered and deep: past the end is known from the counts, and a page is
                # found in the sort's index alone (its key columns), then its rows fetched.
                if offset >= self._count_on(conn):
                    return []
                key = "id" if q.sort_by is None else "uuid"
                sql = (
                    f"{_SELECT} WHERE {key} = ANY(ARRAY(SELECT {key} FROM tasks ORDER BY "
                    f"{order} LIMIT %s OFFSET %s)) ORDER BY {order}"
                )
            else:
                sql = f"{_SELECT} WHERE {condition} ORDER BY {order} LIMIT %s OFFSET %s"
            rows = conn.execute(sql, (*params, q.limit, offset)).fetchall()
            return [_record(r) for r in rows]

    @staticmethod
    def _checked(
        conn: psycopg.Connection[Any], sql: str, params: list[Any], q: TaskQuery, match: Any
    ) -> list[TaskRecord]:
        """Read the candidates in order, keep those ``match`` accepts, and page them."""
        with conn.transaction(), conn.cursor(name="celeriac_search") as cur:
            cur.itersize = _STREAM_ROWS
            cur.execute(sql, params)
            return checked_page(map(_record, cur), match, max(q.offset, 0), q.limit)

    def _tasks_known(self) -> int:
        return self._known_count  # as of the last flush or count(): no query here

    # --- aggregates for the UI (definitions in store/aggregates.py, SQL in pg_aggregates) ----

    def throughput(self, since: float, bucket: float) -> list[Bucket]:
        return pg_aggregates.throughput(self._reader, since, bucket)

    def task_type_stats(
        self, since: float, bucket: float, name: str | None = None
    ) -> list[TypeBucket]:
        return pg_aggregates.task_type_stats(self._reader, since, bucket, name)

    def failure_groups(self, since: float, bucket: float) -> list[FailureGroup]:
        return pg_aggregates.failure_groups(self._reader, since, bucket)

    def iter_matching(self, q: TaskQuery, batch: int = 1000) -> Iterator[list[TaskRecord]]:
        """See AggregateStore.iter_matching; a malformed search raises here, before any page.
        Only what is written is read: ``store_matching`` flushes first."""
        node = parse_search(q.search)
        where, params = _filters(q)
        check = None
        if node is not None:
            search = search_condition(node)
            where.append(search.sql)
            params.extend(search.params)
            check = None if search.exact else compile_search(node)
        return pg_aggregates.keyset_pages(
            self._reader, f"SELECT id, timestamp, {_COLS}, extra FROM tasks", where, params,
            _record, check, max(1, batch),
        )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the status page."""
        return {**super().stats(), "writing": self._writing, "listening": self.listening}

