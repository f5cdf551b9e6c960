"""Queue lengths over time, for the dashboard's chart and ``/api/celeriac/stats/queues``.

Every ``INTERVAL`` seconds the sampler asks the broker for the length of every queue it knows
(through ``queues.LengthReader``: on the control thread pool, at most one read in flight, never
waited on for longer than ``TIMEOUT``) and keeps the answers in a ring in memory: 24 hours at
10 s, for at most ``MAX_QUEUES`` queues, in flat float arrays (about 70 kB a queue). The history
is not stored: a restart starts the chart afresh.

The queues known: those a worker consumes, those of the app (its configured queues, and every
queue celeriac itself sent a task to), and those already sampled (a queue whose consumer went
away keeps its line, which is when it matters most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from typing import TYPE_CHECKING

from celeriac.queues import LengthReader

if TYPE_CHECKING:
    from celeriac.cluster import Cluster

log = logging.getLogger("celeriac.queues")

INTERVAL = 10.0
TIMEOUT = 5.0
KEEP = 24 * 3600  # seconds of history
SLOTS = int(KEEP / INTERVAL)  # 8640
MAX_QUEUES = 50


class QueueHistory:
    """A ring of samples: one timestamp column and one length column per queue (NaN: not read
    that round). Touched only from the event loop."""

    def __init__(self, slots: int = SLOTS, max_queues: int = MAX_QUEUES) -> None:
        self.slots = slots
        self.max_queues = max_queues
        self.times = array("d", [math.nan]) * slots
        self.lengths: dict[str, array[float]] = {}
        self.next = 0  # the slot the next sample goes to
        self.dropped: set[str] = set()  # queues past the cap, never sampled

    def add(self, at: float, lengths: dict[str, int]) -> None:
        i = self.next
        self.times[i] = at
        for old in self.lengths.values():
            old[i] = math.nan
        for name in sorted(lengths):
            column = self.lengths.get(name)
            if column is None:
                if len(self.lengths) >= self.max_queues:
                    self.dropped.add(name)
                    continue
                column = self.lengths[name] = array("d", [math.nan]) * self.slots
            column[i] = float(lengths[name])
        self.next = (i + 1) % self.slots

    def known(self) -> list[str]:
        return list(self.lengths)

    def latest(self) -> tuple[float | None, dict[str, int]]:
        """The last sample's time and lengths."""
        i = (self.next - 1) % self.slots
        at = self.times[i]
        if math.isnan(at):
            return None, {}
        return at, {n: int(c[i]) for n, c in self.lengths.items() if not math.isnan(c[i])}

    def buckets(self, since: float, bucket: float, count: int) -> dict[str, list[int | None]]:
        """Per queue, the longest it was in each bucket (None: no sample there). The peak, not
        the mean: a backlog that came and went within a bucket still shows."""
        out: dict[str, list[int | None]] = {n: [None] * count for n in self.lengths}
        for k in range(1, self.slots + 1):  # newest first, until the window's start
            i = (self.next - k) % self.slots
            at = self.times[i]
            if math.isnan(at) or at < since:
                break
            b = int((at - since) // bucket)
            if b >= count:
                continue
            for name, column in self.lengths.items():
                v = column[i]
                if not math.isnan(v):
                    row = out[name]
                    prev = row[b]
                    row[b] = int(v) if prev is None else max(prev, int(v))
        return out


def watched_queues(cluster: Cluster, already: list[str]) -> list[str]:
    """Queues sampled first, then the consumed and the app's ones, in a stable order."""
    names = dict.fromkeys(already)
    fresh: set[str] = set()
    for info in list(cluster.worker_info.values()):
        for q in info.get("active_queues") or ():
            if isinstance(q, dict) and isinstance(q.get("name"), str):
                fresh.add(q["name"])
    fresh.update(str(n) for n in list(cluster.app.amqp.queues or {}))
    names.update(dict.fromkeys(sorted(fresh)))
    return list(names)[:MAX_QUEUES]


class QueueSampler:
    """The loop that fills a QueueHistory; started and stopped in the server's lifespan."""

    def __init__(self, cluster: Cluster, interval: float = INTERVAL) -> None:
        self.cluster = cluster
        self.interval = interval
        self.history = QueueHistory()
        self.error: str | None = None
        self.reader = LengthReader(cluster.control, cluster.app)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="celeriac-queue-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except Exception:  # never let one bad round end the sampling
                log.exception("queue sampler: round failed")
            left = self.interval - (time.monotonic() - started)
            await asyncio.sleep(max(left, 0.05))

    async def sample(self) -> None:
        cluster = self.cluster
        if not cluster.source.counters.connected and cluster.role != "follower":
            self.error = "broker unreachable"  # the reader reconnects; asking too would pile up
            return
        started = time.monotonic()
        try:  # which queues the workers consume: inspects only workers not asked yet
            await asyncio.wait_for(asyncio.shield(cluster.fill_workers()), TIMEOUT)
        except Exception as exc:
            log.debug("queue sampler: worker inspect failed: %r", exc)
        names = watched_queues(cluster, self.history.known())
        left = max(TIMEOUT - (time.monotonic() - started), 0.1)
        try:
            lengths = await self.reader.read(names, left)
        except Exception as exc:
            if self.error is None:
                log.warning("queue sampler: queue lengths unavailable: %r", exc)
            self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        self.error = None
        self.history.add(time.time(), lengths)
