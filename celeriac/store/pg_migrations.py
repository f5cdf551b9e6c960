"""The PostgreSQL schema, as numbered migrations in a ``schema_version`` table.

Migration ``n`` (1-based position in :data:`MIGRATIONS`) takes a database from version ``n - 1``
to ``n``. All of them run in one transaction under an advisory lock, so several celeriac
instances starting together migrate once, and a failed migration leaves the previous version
intact (PostgreSQL's DDL is transactional). Never edit a released migration: append one.

Layout choices: a bigint identity primary key with a UNIQUE uuid (rows go in at the end of the
heap and of the id index; clustering on a random uuid is slower and larger, see
``shared/spec/celery-events.md``). Text columns use the "C" collation, so that ``lower(name)``
sorts by code point as the other stores do, whatever the server's locale. A value whose type
does not fit its column (a ``result`` that is an int, ``retries`` beyond 64 bits) keeps its
column's text or number for filters and search, and its exact self in ``extra`` (JSON text),
so every value comes back as it was put.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "COLUMN_TYPES",
    "MIGRATIONS",
    "SEARCH_FIELDS",
    "SEARCH_TEXT",
    "Migration",
    "MigrationError",
    "migrate",
    "schema_version",
]

Migration = Callable[[Any], None]  # takes a psycopg Connection inside a transaction

#: Task record keys stored as columns, in table order, with their Python type.
COLUMN_TYPES: tuple[tuple[str, type], ...] = (
    ("uuid", str), ("name", str), ("state", str), ("args", str), ("kwargs", str),
    ("result", str), ("exception", str), ("traceback", str),
    ("sent", float), ("received", float), ("started", float), ("succeeded", float),
    ("failed", float), ("retried", float), ("revoked", float), ("rejected", float),
    ("eta", str), ("expires", str), ("retries", int), ("runtime", float),
    ("timestamp", float), ("clock", int), ("worker", str), ("client", str),
    ("exchange", str), ("routing_key", str), ("parent_id", str), ("root_id", str),
)  # fmt: skip
_SQL_TYPES = {str: 'text COLLATE "C"', float: "double precision", int: "bigint"}

#: The fields a search looks in, in the order they are joined in :data:`SEARCH_TEXT`.
SEARCH_FIELDS = ("name", "args", "kwargs", "result", "exception", "traceback", "worker")

#: The text a search looks in, one expression with a trigram index on it: the fields a term
#: without a qualifier searches, joined by a unit separator, chr(31), which no term contains,
#: so that no match spans two fields and a field can be found by its position; lower-cased in
#: the database's own collation (the columns' "C" would fold ASCII only). Queries must spell
#: it exactly so to use the index. Never change it in place: a new index needs a migration.
SEARCH_TEXT = (
    "lower(("
    + " || chr(31) || ".join(f"coalesce({f}, '')" for f in SEARCH_FIELDS)
    + ') COLLATE "default")'
)


def _v1(conn: Any) -> None:
    cols = ",\n    ".join(
        f"{name} {_SQL_TYPES[kind]}" + (" NOT NULL UNIQUE" if name == "uuid" else "")
        for name, kind in COLUMN_TYPES
    )
    statements = [
        # Trusted since PostgreSQL 13: a database owner may create it without superuser.
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        f"""CREATE TABLE tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    {cols},
    extra text
)""",
        # Every index ends in (timestamp, id), missing values first, like the order the API
        # documents: each serves an equality filter on its column newest first (scanned
        # backwards), and a sort on its column in either direction with ties by timestamp then
        # insertion. state, name and worker match case-insensitively, hence lower().
        "CREATE INDEX tasks_timestamp ON tasks (timestamp NULLS FIRST, id)",
        "CREATE INDEX tasks_state ON tasks (lower(state) NULLS FIRST, timestamp NULLS FIRST, id)",
        "CREATE INDEX tasks_name ON tasks (lower(name) NULLS FIRST, timestamp NULLS FIRST, id)",
        "CREATE INDEX tasks_worker ON tasks (lower(worker), timestamp NULLS FIRST, id)",
        "CREATE INDEX tasks_received ON tasks (received NULLS FIRST, timestamp NULLS FIRST, id)",
        "CREATE INDEX tasks_started ON tasks (started NULLS FIRST, timestamp NULLS FIRST, id)",
        # Most tasks have no parent: a partial index stays small and serves parent_id = ?.
        "CREATE INDEX tasks_parent ON tasks (parent_id, id) WHERE parent_id IS NOT NULL",
        f"CREATE INDEX tasks_search ON tasks USING gin ({SEARCH_TEXT} gin_trgm_ops)",
        # Exact counts without a scan: the writer adds its deltas in the same transaction.
        'CREATE TABLE task_counts (state text COLLATE "C" PRIMARY KEY, n bigint NOT NULL)',
        'CREATE TABLE task_names (name text COLLATE "C" PRIMARY KEY)',
        """CREATE TABLE workers (
    hostname text COLLATE "C" PRIMARY KEY, info text NOT NULL, updated double precision
)""",
    ]
    for sql in statements:
        conn.execute(sql)


def _v2(conn: Any) -> None:
    """Sorts break ties by task id, as Flower does (and the SQLite store, since its v2), each
    sort read straight off an index ending in uuid. v1's name and state indexes stay: they
    serve the filters newest first. Its received and started indexes only served sorts."""
    for sql in (
        "CREATE INDEX tasks_name_sorted ON tasks (lower(name) NULLS FIRST, uuid)",
        "CREATE INDEX tasks_state_sorted ON tasks (state NULLS FIRST, uuid)",
        "DROP INDEX tasks_received",
        "CREATE INDEX tasks_received ON tasks (received NULLS FIRST, uuid)",
        "DROP INDEX tasks_started",
        "CREATE INDEX tasks_started ON tasks (started NULLS FIRST, uuid)",
    ):
        conn.execute(sql)


def _v3(conn: Any) -> None:
    """The throughput chart counts finished tasks per bucket from the states and timestamps
    alone; v1's state index is on ``lower(state)``, an expression, which cannot answer an
    index-only scan, so the chart read the whole table (678 ms at 1 M tasks). A plain
    ``(state, timestamp)`` index holds both columns it reads."""
    conn.execute("CREATE INDEX tasks_state_time ON tasks (state, timestamp)")


#: Every migration, oldest first; the schema version is the length of this tuple.
MIGRATIONS: tuple[Migration, ...] = (_v1, _v2, _v3)

#: Advisory lock key that serialises migrations between instances ("celeriac" in ASCII).
MIGRATION_LOCK = 0x63656C6572696163


class MigrationError(Exception):
    """The database cannot be brought to the schema this code knows."""


def schema_version(conn: Any) -> int:
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: Any, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations the database has not seen yet; return the version it is now at.

    ``conn`` must be in autocommit mode: this opens its own transaction. A database newer
    than this code is refused rather than guessed at.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version integer PRIMARY KEY, applied double precision NOT NULL)"
        )
        current = schema_version(conn)
        if current > len(migrations):
            raise MigrationError(
                f"the database has schema version {current}, newer than this celeriac knows "
                f"({len(migrations)}); upgrade celeriac or use another database"
            )
        for version in range(current + 1, len(migrations) + 1):
            migrations[version - 1](conn)
            conn.execute(
                "INSERT INTO schema_version (version, applied) "
                "VALUES (%s, extract(epoch FROM now()))",
                (version,),
            )
    return schema_version(conn)
