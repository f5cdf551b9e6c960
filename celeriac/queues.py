"""Queue lengths asked of the broker itself: exact, and no management plugin needed.

A passive ``queue_declare`` answers the count on every kombu transport: RabbitMQ reports its
ready messages, and kombu's virtual transports (Redis sums the priority sub-queues) their size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from celery import Celery

if TYPE_CHECKING:
    from celeriac.control import Control

log = logging.getLogger("celeriac.queues")


def queue_consumers(worker_info: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each queue some worker consumes, as last inspected (``active_queues``), with the names
    of those workers, in order."""
    consumers: dict[str, list[str]] = {}
    for worker, info in sorted(list(worker_info.items())):
        for q in info.get("active_queues") or ():
            if isinstance(q, dict) and isinstance(q.get("name"), str) and q["name"]:
                consumers.setdefault(q["name"], []).append(worker)
    return consumers


def reported_queues(worker_info: dict[str, dict[str, Any]], app: Celery) -> list[str]:
    """The queues ``/api/queues/length`` reports: those the workers consume, else (as Flower,
    with no worker to ask) the ones the app declares."""
    names = set(queue_consumers(worker_info))
    if not names:
        conf = app.conf
        names.add(conf.task_default_queue)
        names.update(q.name for q in conf.task_queues or () if getattr(q, "name", None))
    return sorted(names)


def queue_lengths(app: Celery, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue. Blocking: call it from a thread."""
    if not names:
        return {}
    lengths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel: Any = conn.channel()
        try:
            for name in names:
                try:
                    lengths[name] = int(channel.queue_declare(queue=name, passive=True)[1])
                except Exception as exc:  # no such queue yet (nothing was ever sent to it)
                    log.debug("length of %s unknown: %s", name, exc)
                    lengths[name] = 0
                    # On AMQP a failed passive declare closes the channel.
                    _close(channel)
                    channel = conn.channel()
        finally:
            _close(channel)
    return lengths


class LengthReader:
    """The one way the event loop asks for queue lengths: ``queue_lengths`` on the control
    thread pool, at most one read in flight, a caller waiting at most ``timeout``.

    A read that outlasts its caller goes on, and the next caller waits for it rather than
    asking again: a broker that hangs holds one thread, not one per scrape or round. (That
    caller gets the queues the read was asked for, which the previous caller chose.)
    Metrics, alerts and the queue sampler each hold one."""

    def __init__(self, control: Control, app: Celery) -> None:
        self.control = control
        self.app = app
        self._pending: asyncio.Future[dict[str, int]] | None = None

    async def read(self, names: list[str], timeout: float) -> dict[str, int]:
        """Raises TimeoutError when the read takes longer, or what the broker raised."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(
                self.control.run(queue_lengths, self.app, names))
        return await asyncio.wait_for(asyncio.shield(self._pending), timeout)


def _close(channel: Any) -> None:
    with contextlib.suppress(Exception):
        channel.close()
