"""A PostgreSQL schema per watched cluster, so several clusters share one database unmixed.

The cluster's database URL carries ``options=-c search_path=celeriac_NAME,public``: every
connection the store and the leader election open lands in the cluster's own schema, the
store's SQL stays unqualified, and the migrations (which find ``schema_version`` through the
search path) run once per schema. ``public`` stays on the path for the ``pg_trgm`` operators.
The schema is created before the store first connects; a missing schema would otherwise let
the search path fall through to ``public``.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

log = logging.getLogger("celeriac")

PREFIX = "celeriac_"
_OPTION = re.compile(r"-c\s*search_path=(celeriac_[a-z0-9_]+),public")


def schema_name(cluster: str) -> str:
    """``eu-west`` -> ``celeriac_eu_west`` (settings refuse two names that map to one)."""
    return PREFIX + cluster.replace("-", "_")


def with_schema(url: str, schema: str) -> str:
    """The database URL with the schema first on every connection's search path."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    others = [(k, v) for k, v in query if k != "options"]
    given = [v for k, v in query if k == "options"]
    options = " ".join([*given, f"-c search_path={schema},public"])
    text = urlencode([*others, ("options", options)], quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, text, parts.fragment))


def schema_of(url: str) -> str | None:
    """The cluster schema :func:`with_schema` put in ``url``, if any."""
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key == "options":
            found = _OPTION.search(value)
            if found:
                return found.group(1)
    return None


def ensure_schema(url: str) -> None:
    """Create the URL's cluster schema (and ``pg_trgm`` in ``public``) if missing. Errors are
    left to the store's own connection, which reports them in one line without a password."""
    schema = schema_of(url)
    if schema is None:
        return
    try:
        import psycopg
    except ImportError:
        return  # the store says what is missing
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            try:  # where the first schema's migration would otherwise put it, out of reach
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
            except psycopg.Error as exc:
                log.debug("pg_trgm in public: %s", type(exc).__name__)
    except psycopg.errors.UniqueViolation:
        pass  # another instance created it at the same moment
    except psycopg.Error as exc:
        log.debug("cannot create schema %s: %s", schema, type(exc).__name__)
