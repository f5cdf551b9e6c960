"""Prometheus metrics at ``/metrics``: Flower's six under their exact names and labels, so its
dashboards keep working, plus celeriac's own (tasks by state, events by type, queue lengths,
queue wait, workers, ingest health, the store).

Nothing here runs per event through ``prometheus_client``: its labelled metrics cost several
times what plain dicts do on the ingest path (bench/metrics_bench.py, bench/results/metrics.md).
The ingest thread only bumps plain dicts in :class:`EventTally` (the state's observer); a custom
collector turns those, the state, the source's counters and the store into metric families when
Prometheus scrapes. Each app has its own registry.

Label values are task names and worker host names only, never ids, and each is capped
(:data:`MAX_TASK_NAMES`, :data:`MAX_HOSTS`, :data:`MAX_PAIRS` pairs of them): past a cap they
count under ``__other__``. A
worker that is offline leaves every per-worker series except ``flower_worker_online``, which
reads 0 until the worker is forgotten (``--purge-offline-workers``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac import __version__
from celeriac.cluster import Cluster
from celeriac.events.base import Event
from celeriac.queues import LengthReader, reported_queues
from celeriac.store.base import TaskQuery, TaskRecord, TaskStore

log = logging.getLogger("celeriac.metrics")

#: Distinct task names / host names given a label of their own; the rest are ``__other__``.
MAX_TASK_NAMES = 1000
MAX_HOSTS = 1000
#: Distinct (worker, task name) pairs with series of their own: every pair carries a runtime
#: histogram (17 samples) and a counter per event type, so this bounds a scrape's size. Past it
#: a worker's further task names count under ``__other__``.
MAX_PAIRS = 2000
OTHER = "__other__"
#: Flower's default runtime buckets (prometheus_client's), so its dashboards' quantiles agree.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0)
#: The longest a scrape waits for the broker's queue lengths; the scrape answers without them.
QUEUE_TIMEOUT = 3.0
#: A store without its own count by state is walked at scrape time up to this many tasks.
STATE_SCAN_LIMIT = 200_000

_PREFETCH_DROPPED = frozenset({"task-revoked", "task-rejected"})
#: No runtime or wait is longer than a year: larger values come from broken clocks or events.
_LONGEST = 365 * 86400.0


def _observe(histogram: list[float], buckets: Sequence[float], value: float) -> None:
    """``histogram``: a count per bucket (the last one +Inf), then the sum."""
    histogram[bisect_left(buckets, value)] += 1
    histogram[-1] += value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


class _Pair:
    """The numbers of one (worker, task name) label pair, bumped in place on the ingest thread.

    The tally finds a pair's record with two dict lookups on the raw hostname and task name
    (cached), instead of capping both values and building two tuples at every event, which
    cost half as much as the whole merge of the event into the state (counted in
    instructions, bench/results/ingest.md)."""

    __slots__ = ("events", "name", "prefetch_time", "prefetched", "runtime", "wait", "worker")

    def __init__(self, worker: str, name: str) -> None:
        self.worker = worker
        self.name = name
        self.events: dict[str, int] = {}  # event type -> count
        self.runtime: list[float] | None = None  # a histogram, once a task succeeded
        self.prefetched: int | None = None  # None: no series (no task received without ETA)
        self.prefetch_time: float | None = None
        self.wait: list[float] | None = None  # the task name's wait histogram, shared


class EventTally:
    """Plain counters kept on the ingest thread (the state's observer): a few dict operations
    an event. Readers take copies (a dict or list copy is atomic under the GIL)."""

    def __init__(self, max_names: int = MAX_TASK_NAMES, max_hosts: int = MAX_HOSTS,
                 max_pairs: int = MAX_PAIRS,
                 runtime_buckets: Sequence[float] | None = None) -> None:
        # --task-runtime-metric-buckets (Flower's --task_runtime_metric_buckets)
        self.runtime_buckets = tuple(runtime_buckets or RUNTIME_BUCKETS)
        self.max_names = max_names
        self.max_hosts = max_hosts
        self.max_pairs = max_pairs
        self.names: set[str] = set()
        self.hosts: set[str] = set()
        self.worker_hosts: set[str] = set()  # hosts seen sending worker events
        self.wait: dict[str, list[float]] = {}  # task
        self._pairs: dict[tuple[str, str], _Pair] = {}  # (worker, task), as labelled
        # raw hostname -> raw task name -> its pair, for the values seen so far (bounded)
        self._seen: dict[Any, dict[Any, _Pair]] = {}
        self._seen_count = 0
        self._worker_types: dict[str, int] = {}

    # -- what the scrape reads (copies) ------------------------------------------------------
    @property
    def events(self) -> dict[tuple[str, str, str], int]:
        """Events by (worker, type, task)."""
        return {(p.worker, kind, p.name): n for p in list(self._pairs.values())
                for kind, n in dict(p.events).items()}

    @property
    def types(self) -> dict[str, int]:
        """Events by type, task and worker events alike."""
        out = dict(self._worker_types)
        for p in list(self._pairs.values()):
            for kind, n in dict(p.events).items():
                out[kind] = out.get(kind, 0) + n
        return out

    @property
    def runtime(self) -> dict[tuple[str, str], list[float]]:
        return {(p.worker, p.name): list(h) for p in list(self._pairs.values())
                if (h := p.runtime) is not None}

    @property
    def prefetched(self) -> dict[tuple[str, str], int]:
        return {(p.worker, p.name): n for p in list(self._pairs.values())
                if (n := p.prefetched) is not None}

    @property
    def prefetch_time(self) -> dict[tuple[str, str], float]:
        return {(p.worker, p.name): t for p in list(self._pairs.values())
                if (t := p.prefetch_time) is not None}

    # -- the ingest thread -------------------------------------------------------------------
    def _admit(self, value: str, seen: set[str], cap: int) -> str:
        """A label value: itself while under the cap, else ``__other__``."""
        if len(seen) < cap:
            seen.add(value)
            return value
        return OTHER

    def _pair(self, raw_worker: Any, raw_name: Any) -> _Pair:
        """The pair an event of ``raw_worker`` about a task named ``raw_name`` counts under:
        each value capped, then the pair itself."""
        worker = raw_worker
        if worker.__class__ is not str:
            worker = ""
        elif worker not in self.hosts:
            worker = self._admit(worker, self.hosts, self.max_hosts)
        name = raw_name
        if name.__class__ is not str:
            name = ""
        elif name not in self.names:
            name = self._admit(name, self.names, self.max_names)
        pair = self._pairs.get((worker, name))
        if pair is None:
            if len(self._pairs) >= self.max_pairs:
                # past the cap only (worker, __other__): one more per host
                name = OTHER
                pair = self._pairs.get((worker, name))
            if pair is None:
                pair = self._pairs[(worker, name)] = _Pair(worker, name)
        # Remember the raw values' pair, up to a bound: past the caps every new name would
        # otherwise grow the cache for ever.
        if self._seen_count < 4 * self.max_pairs:
            try:
                by_name = self._seen.get(raw_worker)
                if by_name is None:
                    by_name = self._seen[raw_worker] = {}
                if raw_name not in by_name:
                    by_name[raw_name] = pair
                    self._seen_count += 1
            except TypeError:  # not hashable (a list in an event): counted, not cached
                pass
        return pair

    def task_event(self, kind: str, ev: Event, rec: TaskRecord) -> None:
        # Hot path: the cached pair, then plain attribute and dict operations.
        worker, name = ev.get("hostname"), rec.get("name")
        try:
            pair = self._seen[worker][name]
        except (KeyError, TypeError):  # not seen yet, or a value that cannot be a key
            pair = self._pair(worker, name)
        events = pair.events
        events[kind] = events.get(kind, 0) + 1
        # Flower's prefetch bookkeeping, on the merged record: only tasks without an ETA.
        received = rec.get("received")
        prefetch = received is not None and not rec.get("eta")
        if kind == "task-received":
            if prefetch:
                pair.prefetched = (pair.prefetched or 0) + 1
        elif kind == "task-started":
            started = rec.get("started")
            if started is None:
                return
            since = rec.get("sent") or received
            if since is not None and not rec.get("eta"):
                waited = started - since
                if waited == waited:  # not NaN: one bad timestamp must not poison the sum
                    h = pair.wait
                    if h is None:
                        h = self.wait.get(pair.name)
                        if h is None:
                            h = self.wait[pair.name] = [0.0] * (len(WAIT_BUCKETS) + 2)
                        pair.wait = h
                    _observe(h, WAIT_BUCKETS, min(max(waited, 0.0), _LONGEST))
            if prefetch:
                pair.prefetch_time = max(started - received, 0.0)
                pair.prefetched = (pair.prefetched or 0) - 1
        elif kind == "task-succeeded":
            runtime = ev.get("runtime")
            if (runtime.__class__ is float or runtime.__class__ is int) and (
                    0 <= runtime <= _LONGEST):  # NaN, negative or absurd: not observed
                h = pair.runtime
                if h is None:
                    h = pair.runtime = [0.0] * (len(self.runtime_buckets) + 2)
                _observe(h, self.runtime_buckets, runtime)
            if prefetch and rec.get("started") is not None:
                pair.prefetch_time = 0.0
        elif kind == "task-failed":
            if prefetch and rec.get("started") is not None:
                pair.prefetch_time = 0.0
        elif kind in _PREFETCH_DROPPED and prefetch and rec.get("started") is None:
            pair.prefetched = (pair.prefetched or 0) - 1

    def worker_event(self, kind: str, ev: Event) -> None:
        self._worker_types[kind] = self._worker_types.get(kind, 0) + 1
        host = ev.get("hostname")
        if host.__class__ is str and host not in self.worker_hosts:
            self.worker_hosts.add(host)

    def forget(self, hosts: Iterable[str]) -> None:
        """Drop the series of workers the state no longer knows (purged)."""
        gone = set(hosts)
        # The cache first: the ingest thread must not find a forgotten pair through it.
        self._seen = {}
        self._seen_count = 0
        for key in [k for k in list(self._pairs) if k[0] in gone]:
            self._pairs.pop(key, None)
        self.worker_hosts -= gone
        self.hosts -= gone


def _histogram(counts: list[float], buckets: Sequence[float]) -> tuple[list[tuple[str, float]],
                                                                       float]:
    cumulative, out = 0.0, []
    for bound, n in zip((*buckets, float("inf")), counts[:-1], strict=True):
        cumulative += n
        out.append((floatToGoString(bound), cumulative))
    return out, counts[-1]


class ClusterCollector:
    """Builds every metric family at scrape time from what the cluster already keeps."""

    def __init__(self, cluster: Cluster, tally: EventTally, metrics: Metrics) -> None:
        self.cluster = cluster
        self.tally = tally
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        status = self.cluster.state.worker_status()
        forgotten = self.tally.worker_hosts - set(status)
        if forgotten:
            self.tally.forget(forgotten)
        offline = {w for w, up in status.items() if not up}
        # One part failing (a store mid-migration, say) costs its own families, not the scrape.
        for part in (lambda: self._flower(status, offline), self._tasks,
                     lambda: self._workers(status, offline), self._queues, self._ingest,
                     self._store):
            try:
                families = list(part())
            except Exception:
                log.exception("metrics: a collector part failed")
                continue
            yield from families

    def _flower(self, status: dict[str, bool], offline: set[str]) -> Iterator[Metric]:
        t = self.tally
        events = CounterMetricFamily("flower_events", "Number of events",
                                     labels=["worker", "type", "task"])
        for (worker, kind, name), n in dict(t.events).items():
            if worker not in offline:
                events.add_metric([worker, kind, name], n)
        yield events
        runtime = HistogramMetricFamily("flower_task_runtime_seconds", "Task runtime",
                                        labels=["worker", "task"])
        for (worker, name), counts in dict(t.runtime).items():
            if worker not in offline:
                buckets, total = _histogram(list(counts), t.runtime_buckets)
                runtime.add_metric([worker, name], buckets, total)
        yield runtime
        prefetch_time = GaugeMetricFamily(
            "flower_task_prefetch_time_seconds",
            "The time the task spent waiting at the celery worker to be executed.",
            labels=["worker", "task"])
        for (worker, name), seconds in dict(t.prefetch_time).items():
            if worker not in offline:
                prefetch_time.add_metric([worker, name], seconds)
        yield prefetch_time
        prefetched = GaugeMetricFamily("flower_worker_prefetched_tasks",
                                       "Number of tasks of given type prefetched at a worker",
                                       labels=["worker", "task"])
        for (worker, name), n in dict(t.prefetched).items():
            if worker not in offline:
                prefetched.add_metric([worker, name], max(n, 0))
        yield prefetched
        online = GaugeMetricFamily("flower_worker_online", "Worker online status",
                                   labels=["worker"])
        for worker, up in status.items():
            online.add_metric([worker], 1 if up else 0)
        yield online
        executing = GaugeMetricFamily("flower_worker_number_of_currently_executing_tasks",
                                      "Number of tasks currently executing at a worker",
                                      labels=["worker"])
        for worker, active in self._active(status).items():
            executing.add_metric([worker], active)
        yield executing

    def _active(self, status: dict[str, bool]) -> dict[str, float]:
        """Tasks executing per online worker, from its last heartbeat."""
        out = {}
        for worker, info in self.cluster.state.workers().items():
            active = _number(info.get("active"))
            if status.get(worker) and active is not None:
                out[worker] = active
        return out

    def _tasks(self) -> Iterator[Metric]:
        types = CounterMetricFamily("celeriac_events", "Events applied to the state, by type",
                                    labels=["type"])
        for kind, n in sorted(dict(self.tally.types).items()):
            types.add_metric([kind], n)
        yield types
        wait = HistogramMetricFamily(
            "celeriac_task_queue_wait_seconds",
            "Time from sent (or received, without task-sent events) to started; not ETA tasks",
            labels=["task"])
        for name, counts in dict(self.tally.wait).items():
            buckets, total = _histogram(list(counts), WAIT_BUCKETS)
            wait.add_metric([name], buckets, total)
        yield wait
        by_state = _count_by_state(self.cluster.store)
        if by_state is not None:
            tasks = GaugeMetricFamily("celeriac_tasks", "Tasks in the store, by state",
                                      labels=["state"])
            for state, n in sorted(by_state.items()):
                tasks.add_metric([state], n)
            yield tasks

    def _workers(self, status: dict[str, bool], offline: set[str]) -> Iterator[Metric]:
        workers = GaugeMetricFamily("celeriac_workers", "Workers known, by status",
                                    labels=["status"])
        workers.add_metric(["online"], len(status) - len(offline))
        workers.add_metric(["offline"], len(offline))
        yield workers
        active = GaugeMetricFamily("celeriac_worker_active_tasks",
                                   "Tasks executing on each online worker (from heartbeats)",
                                   labels=["worker"])
        for worker, n in self._active(status).items():
            active.add_metric([worker], n)
        yield active

    def _queues(self) -> Iterator[Metric]:
        lengths = self.metrics.queue_lengths
        ok = GaugeMetricFamily("celeriac_queue_length_ok",
                               "1 if this scrape read the queue lengths from the broker "
                               "(never while the event reader is disconnected)")
        ok.add_metric([], 1 if lengths is not None else 0)
        yield ok
        queues = GaugeMetricFamily("celeriac_queue_length", "Messages waiting in each queue",
                                   labels=["queue"])
        for name, n in sorted((lengths or {}).items()):
            queues.add_metric([name], n)
        yield queues

    def _ingest(self) -> Iterator[Metric]:
        counters = self.cluster.source.counters
        state = self.cluster.state
        for name, doc, value in (
            ("messages", "Broker messages read", counters.messages),
            ("events_received", "Events decoded from those messages", counters.received),
            ("events_malformed", "Messages or events that could not be decoded",
             counters.malformed),
            ("sink_failures", "Batches of events the state could not take (then redelivered "
             "by a stable RabbitMQ queue, dropped otherwise)", counters.sink_failures),
            ("events_applied", "Events merged into the state", state.applied),
            ("events_ignored", "Events that changed nothing (unknown type, no id)",
             state.ignored),
            ("reconnects", "Reconnections to the broker", counters.reconnects),
            ("gaps", "Disconnections during which events may have been missed", counters.gaps),
            ("blind_seconds", "Seconds spent disconnected since the first connection",
             counters.blind_seconds),
        ):
            family = CounterMetricFamily(f"celeriac_ingest_{name}", doc)
            family.add_metric([], value)
            yield family
        connected = GaugeMetricFamily("celeriac_ingest_connected",
                                      "1 while the event reader is connected to the broker")
        connected.add_metric([], 1 if counters.connected else 0)
        yield connected
        if state.last_event_at is not None:
            last = GaugeMetricFamily("celeriac_last_event_timestamp_seconds",
                                     "When the last event batch was applied (Unix time)")
            last.add_metric([], state.last_event_at)
            yield last
        info = GaugeMetricFamily("celeriac_info", "celeriac's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        role = GaugeMetricFamily(
            "celeriac_role",
            "1 for this instance's role: single, or leader or follower on a shared store (only "
            "the leader reads events: event-derived series come from it alone)",
            labels=["role"])
        role.add_metric([_role(self.cluster)], 1)
        yield role
        started = GaugeMetricFamily("celeriac_start_time_seconds",
                                    "When celeriac started (Unix time)")
        started.add_metric([], self.cluster.started_at)
        yield started

    def _store(self) -> Iterator[Metric]:
        store = self.cluster.store
        size = GaugeMetricFamily("celeriac_store_tasks", "Tasks in the store")
        size.add_metric([], store.count())
        yield size
        stats_of = getattr(store, "stats", None)
        stats: dict[str, Any] = stats_of() if callable(stats_of) else {}
        for key, kind, name, doc in (
            ("pending", GaugeMetricFamily, "celeriac_store_pending_writes",
             "Changed tasks waiting for the next flush"),
            ("written", CounterMetricFamily, "celeriac_store_written",
             "Task rows written"),
            ("flushes", CounterMetricFamily, "celeriac_store_flushes", "Flushes to disk"),
            ("pruned", CounterMetricFamily, "celeriac_store_pruned", "Tasks pruned"),
            ("last_flush_seconds", GaugeMetricFamily, "celeriac_store_last_flush_seconds",
             "How long the last flush took"),
            ("failing", GaugeMetricFamily, "celeriac_store_failing",
             "1 while writes to the store fail"),
        ):
            value = _number(stats.get(key))
            if value is not None:
                family = kind(name, doc)
                family.add_metric([], value)
                yield family
        errors = stats.get("write_errors")
        if isinstance(errors, dict):
            family = CounterMetricFamily("celeriac_store_write_errors",
                                         "Failed writes to the store, by error",
                                         labels=["error"])
            for error, n in sorted(errors.items()):
                family.add_metric([str(error)], n)
            yield family


def _role(cluster: Cluster) -> str:
    return str(getattr(cluster, "role", "single"))


def _count_by_state(store: TaskStore) -> dict[str, int] | None:
    """Tasks per state: the store's own count if it keeps one, else a walk of a small store."""
    counter = getattr(store, "count_by_state", None)
    if callable(counter):
        return dict(counter())
    if store.count() > STATE_SCAN_LIMIT:
        return None
    out: dict[str, int] = {}
    for rec in store.query(TaskQuery()):
        state = rec.get("state") or "PENDING"
        out[state] = out.get(state, 0) + 1
    return out


class Metrics:
    """One app's metrics: its own registry, the event tally, and the scrape."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.tally = EventTally(runtime_buckets=cluster.settings.task_runtime_metric_buckets)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(cluster, self.tally, self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.queue_lengths: dict[str, int] | None = None
        self.reader = LengthReader(cluster.control, cluster.app)
        cluster.state.observe(self.tally)

    async def read_queues(self, timeout: float = QUEUE_TIMEOUT) -> None:
        """The broker's queue lengths, on a thread, at most one read at a time, bounded."""
        started = time.monotonic()
        cluster = self.cluster
        if not cluster.source.counters.connected and _role(cluster) != "follower":
            # The broker is unreachable for the event reader too: asking again at every scrape
            # would only pile up connection attempts. The lengths are reported missing.
            # (A follower on a shared store reads no events: it asks the broker regardless.)
            self.queue_lengths = None
            return
        try:
            await asyncio.wait_for(asyncio.shield(cluster.fill_workers()), timeout)
        except Exception as exc:  # a slow or failed inspect: the queues known so far
            log.debug("metrics: worker inspect failed: %r", exc)
        names = reported_queues(cluster.worker_info, cluster.app)
        left = max(timeout - (time.monotonic() - started), 0.1)
        try:
            self.queue_lengths = await self.reader.read(names, left)
        except Exception as exc:
            log.warning("metrics: queue lengths unavailable: %r", exc)
            self.queue_lengths = None

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    m.cluster.worker_status()  # forgets workers offline past --purge-offline-workers
    await m.read_queues()
    body, content_type = await run_in_threadpool(m.render, request.headers.get("accept"))
    return Response(body, media_type=content_type)


routes = [Route("/metrics", metrics, methods=["GET"])]
