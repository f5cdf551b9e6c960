"""Several watched clusters in one instance: each a :class:`~celeriac.cluster.Cluster` of its own.

Every cluster has its own app, event source, state, store and control; nothing is shared but
the process. The default one (``--broker``'s, or the first ``--cluster``, or the one
``--default-cluster`` names) answers at Flower's paths; every other one has the same API and UI
under ``/clusters/NAME`` (see ``server.create_app``), its own ``/clusters/NAME/metrics`` and,
with ``--alerts``, its own alert rules evaluation.

Where each keeps its history: SQLite's default file is per broker already; an explicit
``--db tasks.sqlite3`` is the default cluster's (``--broker``'s) and every ``--cluster NAME``
gets ``tasks.NAME.sqlite3``; on PostgreSQL every ``--cluster NAME`` gets the schema
``celeriac_NAME`` (store/pg_schema.py) while ``--broker``'s cluster keeps the URL's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from celeriac.cluster import BrokerUnreachable, Cluster, load_app
from celeriac.leader import is_database_url
from celeriac.settings import ClusterSpec, Settings
from celeriac.store.location import NO_PERSISTENCE, cluster_db_path
from celeriac.store.pg_schema import schema_name, with_schema

#: The path under which every cluster but the default one is served.
CLUSTERS_PATH = "/clusters"
#: How often the overview samples each cluster's event counter, and how far back its rate looks.
RATE_EVERY = 2.0
RATE_SPAN = 10.0
#: The overview recounts a cluster's tasks by state at most this often.
COUNT_EVERY = 5.0


def cluster_db(db: str | None, spec: ClusterSpec) -> str | None:
    """The ``--db`` for one cluster: the primary (``--broker``) keeps it as given."""
    if spec.primary or db is None or db.strip().lower() in NO_PERSISTENCE:
        return db
    if is_database_url(db):
        return with_schema(db, schema_name(spec.name))
    return cluster_db_path(db, spec.name)


def cluster_settings(settings: Settings, spec: ClusterSpec, default: bool) -> Settings:
    """The settings one cluster runs with: its broker, app, backend, store and URL prefix."""
    prefix = settings.prefix if default else f"{settings.prefix}{CLUSTERS_PATH}/{spec.name}"
    if spec.primary:
        changes: dict[str, Any] = {}
    else:
        changes = {"broker": spec.broker, "app": spec.app, "result_backend": spec.result_backend}
    return settings.replace(
        **changes, db=cluster_db(settings.db, spec), url_prefix=prefix, clusters=(),
        default_cluster=None,
    )


@dataclass
class Member:
    """One cluster of the set, with the settings it runs with (its own URL prefix)."""

    name: str
    cluster: Cluster
    default: bool
    settings: Settings
    # (monotonic time, events applied) every RATE_EVERY s, for the overview's events/s.
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=16))
    counted_at: float = 0.0
    counts: dict[str, int] | None = None

    @property
    def base(self) -> str:
        """The URL prefix of its pages and API (``""`` for the default at the root)."""
        return self.settings.prefix

    def events_per_s(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None


class Clusters:
    """The watched clusters, the default first; built, started and closed together."""

    def __init__(self, members: list[Member]) -> None:
        assert members and members[0].default
        self.members = members
        self._by_name = {m.name: m for m in members}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def single(cls, settings: Settings, cluster: Cluster) -> Clusters:
        """One cluster, as celeriac has always run (tests and the demo pass their own)."""
        name = cluster.name or settings.default_cluster or "default"
        return cls([Member(name, cluster, True, settings)])

    @classmethod
    def build(cls, settings: Settings, app: Celery | None = None) -> Clusters:
        """A Cluster per spec; ``app`` (``celery -A proj celeriac``) is the primary one's.
        Raises SettingsError or StoreError (one line) after closing what was opened."""
        specs = settings.cluster_specs()
        if len(specs) == 1 and specs[0].primary:  # as celeriac has always run
            return cls.single(settings, Cluster(settings, app=app))
        several = len(specs) > 1
        members: list[Member] = []
        apps: list[Celery] = []
        try:
            for i, spec in enumerate(specs):
                own = cluster_settings(settings, spec, default=i == 0)
                spec_app = app if spec.primary and app is not None else load_app(own, apps)
                apps.append(spec_app)
                cluster = Cluster(own, app=spec_app, name=spec.name if several else None)
                members.append(Member(spec.name, cluster, i == 0, own))
        except BaseException:
            for m in members:
                with contextlib.suppress(Exception):
                    m.cluster.close()
            raise
        return cls(members)

    # -- the set ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def default(self) -> Member:
        return self.members[0]

    def get(self, name: str) -> Member | None:
        return self._by_name.get(name)

    # -- lifecycle --------------------------------------------------------------------------
    def check_brokers(self) -> None:
        """Fail fast, in one line naming the cluster (when there are several)."""
        for m in self:
            try:
                m.cluster.check_broker()
            except BrokerUnreachable as exc:
                if len(self) == 1:
                    raise
                raise BrokerUnreachable(f"cluster {m.name}: {exc}") from None

    def start(self) -> None:
        for m in self:
            m.cluster.start()

    def start_sampling(self) -> None:
        """The overview's events/s (only when there is an overview to show)."""
        if len(self) > 1:
            self._task = asyncio.create_task(self._sample(), name="celeriac-clusters")

    async def stop_sampling(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def close(self) -> None:
        for m in reversed(self.members):
            m.cluster.close()

    async def _sample(self) -> None:
        while True:
            now = time.monotonic()
            for m in self:
                m.samples.append((now, m.cluster.state.applied))
                while m.samples and now - m.samples[0][0] > RATE_SPAN:
                    m.samples.popleft()
            await asyncio.sleep(RATE_EVERY)

    # -- the overview -----------------------------------------------------------------------
    async def overview(self) -> list[dict[str, Any]]:
        """What the dashboard's overview and ``/api/celeriac/clusters`` show of each."""
        from starlette.concurrency import run_in_threadpool

        from celeriac.web.hub import count_tasks

        out = []
        now = time.monotonic()
        for m in self:
            cluster = m.cluster
            if now - m.counted_at >= COUNT_EVERY:
                m.counted_at = now
                counted = await run_in_threadpool(count_tasks, cluster.store)
                m.counts = counted[0] if counted else None
            status = cluster.worker_status()
            out.append({
                "name": m.name,
                "default": m.default,
                "url": f"{m.base}/",
                "broker": cluster.broker_url,
                "role": cluster.role,
                "connected": bool(getattr(cluster.source.counters, "connected", False)),
                "workers_online": sum(1 for up in status.values() if up),
                "workers_offline": sum(1 for up in status.values() if not up),
                "tasks": m.counts,
                "events_per_s": m.events_per_s(),
            })
        return out
