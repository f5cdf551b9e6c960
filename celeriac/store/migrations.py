"""The SQLite schema, as numbered migrations, so that an upgrade opens an older database as is.

Migration ``n`` (1-based position in :data:`MIGRATIONS`) takes a database from schema version
``n - 1`` to ``n``; the version lives in ``PRAGMA user_version``. Each migration runs in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash mid-upgrade leaves the
previous version intact. Never edit a released migration: append a new one.

Layout choices (measured, see ``shared/spec/celery-events.md``): a rowid table with a UNIQUE
uuid, because clustering on a random uuid is 3x slower and 2.6x larger. Columns carry no
declared type so values come back exactly as they were put (an int stays an int).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]

#: Task record keys stored as columns, in table order (``children`` is derived from parent_id).
TASK_COLUMNS = (
    "uuid", "name", "state", "args", "kwargs", "result", "exception", "traceback",
    "sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
    "eta", "expires", "retries", "runtime", "timestamp", "clock", "worker", "client",
    "exchange", "routing_key", "parent_id", "root_id",
)  # fmt: skip

#: Columns in the full-text index. name and worker are not: their few distinct values are
#: matched in Python against the small ``task_names`` and ``worker_names`` tables instead.
FTS_COLUMNS = ("args", "kwargs", "result", "exception", "traceback")


def _v1(conn: sqlite3.Connection) -> None:
    cols = ",\n    ".join(TASK_COLUMNS[1:])
    statements = [
        f"""CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    {cols}
)""",
        # Every index ends in (timestamp, rowid): each serves a filter on its column newest
        # first, and a sort on its column with ties by timestamp then insertion, in the same
        # direction. Rows go in at the end of their group, never at a random place as a uuid
        # would put them: at 1M tasks that made inserts 1.5x faster (measured).
        "CREATE INDEX tasks_timestamp ON tasks (timestamp)",
        "CREATE INDEX tasks_state ON tasks (state, timestamp)",
        "CREATE INDEX tasks_name ON tasks (name COLLATE NOCASE, timestamp)",
        "CREATE INDEX tasks_worker ON tasks (worker, timestamp)",
        "CREATE INDEX tasks_received ON tasks (received, timestamp)",
        "CREATE INDEX tasks_started ON tasks (started, timestamp)",
        # Most tasks have no parent: a partial index stays small and still serves parent_id = ?.
        "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
        "CREATE TABLE task_names (name TEXT PRIMARY KEY)",
        "CREATE TABLE worker_names (name TEXT PRIMARY KEY)",
        "CREATE TABLE workers (hostname TEXT PRIMARY KEY, info TEXT NOT NULL, updated REAL)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
        "INSERT INTO meta (key, value) VALUES ('task_count', 0)",
        # Trigram tokens give substring search of 3+ characters. External content: the text is
        # stored once, in tasks. The writer keeps the index in sync itself, a few statements
        # per batch: FTS5 flushes its buffer at every statement savepoint, so per-row triggers
        # would write a tiny segment per task and ingest three times slower (measured).
        f"""CREATE VIRTUAL TABLE tasks_fts USING fts5(
    {", ".join(FTS_COLUMNS)}, content='tasks', content_rowid='id', tokenize='trigram'
)""",
    ]
    for sql in statements:
        conn.execute(sql)


def _v2(conn: sqlite3.Connection) -> None:
    """Sorts break ties by task id, as Flower does (``/api/tasks?sort_by=name`` lists the
    tasks of one name in uuid order), each sort read straight off an index ending in uuid.

    v1's name and state indexes stay: they serve the filters newest first. Its received and
    started indexes only served sorts, so they are replaced."""
    for sql in (
        "CREATE INDEX tasks_name_sorted ON tasks (name COLLATE NOCASE, uuid)",
        "CREATE INDEX tasks_state_sorted ON tasks (state, uuid)",
        "DROP INDEX tasks_received",
        "CREATE INDEX tasks_received ON tasks (received, uuid)",
        "DROP INDEX tasks_started",
        "CREATE INDEX tasks_started ON tasks (started, uuid)",
    ):
        conn.execute(sql)


#: Every migration, oldest first; the schema version is the length of this tuple.
MIGRATIONS: tuple[Migration, ...] = (_v1, _v2)


class MigrationError(Exception):
    """The database cannot be brought to the schema this code knows."""


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations the database has not seen yet; return the version it is now at.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so that each migration owns
    its transaction. A database newer than this code is refused rather than guessed at.
    """
    current = schema_version(conn)
    if current > len(migrations):
        raise MigrationError(
            f"the database has schema version {current}, newer than this celeriac knows "
            f"({len(migrations)}); upgrade celeriac or use another database file"
        )
    for version in range(current + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            if schema_version(conn) >= version:
                conn.execute("COMMIT")
                continue
            migrations[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
