"""Queue lengths over time, for the dashboard's chart and ``/api/celeriac/stats/queues``.

Every ``INTERVAL`` seconds the sampler asks the broker for the length of every queue it knows
(through ``queues.LengthReader``: on the control thread pool, at most one read in flight, never
waited on for longer than ``TIMEOUT``) and keeps the answers in a ring in memory: 24 hours at
10 s, for at most ``MAX_QUEUES`` queues, in flat float arrays (69 kB a queue). The history
is not stored: a restart starts the chart afresh.

The queues known: those a worker consumes, those of the app (its configured queues, and every
queue celeriac itself sent a task to), and those already sampled (a queue whose consumer went
away keeps its line, which is when it matters most).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING

from celeriac.queues import LengthReader, queue_consumers

if TYPE_CHECKING:
    from celeriac.cluster import Cluster

log = logging.getLogger("celeriac.queues")

INTERVAL = 10.0
TIMEOUT = 5.0
KEEP = 24 * 3600  # seconds of history
SLOTS = int(KEEP / INTERVAL)  # 8640
MAX_QUEUES = 50


#: A slot with no sample (times) or no length read (a queue's column): lengths are never < 0.
NONE = -1.0


class QueueHistory:
    """A ring of samples: one timestamp column and one length column per queue, flat float
    arrays so that a window's peaks are C-speed ``max`` over slices. Written from the event
    loop; read from a thread (a read racing a write sees one slot half written, harmless for a
    chart)."""

    def __init__(self, slots: int = SLOTS, max_queues: int = MAX_QUEUES) -> None:
        self.slots = slots
        self.max_queues = max_queues
        self.times = array("d", [NONE]) * slots
        self.lengths: dict[str, array[float]] = {}
        self.next = 0  # the slot the next sample goes to; the oldest sample is there
        self.dropped: set[str] = set()  # queues past the cap, never sampled

    def add(self, at: float, lengths: dict[str, int]) -> None:
        i = self.next
        self.times[i] = at
        for old in self.lengths.values():
            old[i] = NONE
        for name in sorted(lengths):
            column = self.lengths.get(name)
            if column is None:
                if len(self.lengths) >= self.max_queues:
                    self.dropped.add(name)
                    continue
                column = self.lengths[name] = array("d", [NONE]) * self.slots
            column[i] = float(lengths[name])
        self.next = (i + 1) % self.slots

    def known(self) -> list[str]:
        return list(self.lengths)

    def latest(self) -> tuple[float | None, dict[str, int]]:
        """The last sample's time and lengths."""
        i = (self.next - 1) % self.slots
        at = self.times[i]
        if at == NONE:
            return None, {}
        return at, {n: int(c[i]) for n, c in self.lengths.items() if c[i] != NONE}

    def buckets(self, since: float, bucket: float, count: int) -> dict[str, list[int | None]]:
        """Per queue, the longest it was in each bucket (None: no sample there). The peak, not
        the mean: a backlog that came and went within a bucket still shows."""
        cut = self.next
        times = self.times[cut:] + self.times[:cut]  # oldest first: ascending
        edges = [bisect_left(times, since + j * bucket) for j in range(count + 1)]
        out: dict[str, list[int | None]] = {}
        for name, ring in list(self.lengths.items()):
            column = ring[cut:] + ring[:cut]
            row: list[int | None] = []
            for a, b in itertools.pairwise(edges):
                peak = max(column[a:b], default=NONE)
                row.append(int(peak) if peak != NONE else None)
            out[name] = row
        return out


def watched_queues(cluster: Cluster, already: list[str]) -> list[str]:
    """Queues sampled already first, then the consumed and the app's ones, in a stable order:
    the first ``MAX_QUEUES`` are sampled, the rest reported as dropped."""
    names = dict.fromkeys(already)
    fresh = set(queue_consumers(cluster.worker_info))
    fresh.update(str(n) for n in list(cluster.app.amqp.queues or {}))
    names.update(dict.fromkeys(sorted(fresh)))
    return list(names)


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
        self.history.dropped.update(names[self.history.max_queues:])
        names = names[:self.history.max_queues]
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
