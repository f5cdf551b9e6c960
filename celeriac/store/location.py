"""Where the task history lives: the ``--db`` value, or a file of its own per watched cluster.

The default file is named from the broker URL without its credentials (transport, host, port,
virtual host or Redis db), so two celeriac instances watching two clusters never share a
history, and a restart of one finds its own again. Passwords never reach a file name or a log.
"""

from __future__ import annotations

import hashlib
import os
import re

#: ``--db`` values that mean "keep history in memory only, nothing on disk".
NO_PERSISTENCE = frozenset({"memory", ":memory:"})

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def cluster_identity(broker_url: str) -> str:
    """``transport://host:port/vhost`` of a broker URL, without user or password; defaults
    filled in as kombu fills them, so ``redis://`` and ``redis://localhost:6379/0`` agree."""
    from kombu import Connection

    # A failover list ("redis://a;redis://b") is one cluster: named by its first broker.
    first = broker_url.split(";")[0].strip()
    info = Connection(first).info()
    transport = str(info.get("transport") or "broker")
    vhost = str(info.get("virtual_host") or "").strip("/")
    if transport == "redis" and not vhost:
        vhost = "0"
    host = info.get("hostname") or "localhost"
    port = info.get("port") or ""
    return f"{transport}://{host}:{port}/{vhost}"


def default_db_file(broker_url: str) -> str:
    """A file name for the broker's history: readable, and distinct for distinct clusters."""
    identity = cluster_identity(broker_url)
    readable = identity.replace("://", "-").replace(":", "-").replace("/", "-").strip("-")
    # The readable part may map two identities to one name ("a/b" and "a-b"); the hash never.
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', readable)[:80]}-{digest}.sqlite3"


def default_db_dir() -> str:
    """The user's data directory for celeriac (``$XDG_DATA_HOME/celeriac`` on Linux)."""
    from platformdirs import user_data_dir

    return user_data_dir("celeriac", appauthor=False)


def db_path(db: str | None, broker_url: str) -> str | None:
    """The SQLite file to use, or None for no persistence. ``db`` is the ``--db`` value."""
    if db and db.strip().lower() in NO_PERSISTENCE:
        return None
    if db:
        return os.path.expanduser(db)
    return os.path.join(default_db_dir(), default_db_file(broker_url))


def cluster_db_path(db: str, name: str) -> str:
    """An explicit SQLite ``--db`` for the cluster ``name`` of several: the name inserted
    before the suffix (``tasks.sqlite3`` -> ``tasks.eu.sqlite3``), so each has its own file."""
    head, tail = os.path.split(os.path.expanduser(db))
    stem, dot, suffix = tail.rpartition(".")
    if not dot or not stem:
        return os.path.join(head, f"{tail}.{name}")
    return os.path.join(head, f"{stem}.{name}.{suffix}")
