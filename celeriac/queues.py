"""Queue lengths asked of the broker itself: exact, and no management plugin needed.

A passive ``queue_declare`` answers the count on every kombu transport: RabbitMQ reports its
ready messages, and kombu's virtual transports (Redis sums the priority sub-queues) their size.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Celery

log = logging.getLogger("celeriac.queues")


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


def _close(channel: Any) -> None:
    with contextlib.suppress(Exception):
        channel.close()
