"""``POST /api/celeriac/queues/{name}/purge``: empty one queue on the broker (admin only).

kombu's ``queue_purge`` removes the messages waiting in the queue and answers how many it
removed: on RabbitMQ the ready messages (ones a worker already holds unacknowledged stay, as
with ``celery purge``), on Redis the whole list with its priority sub-queues. Only a queue
celeriac knows of can be purged (one a worker consumes, one of the app's configured queues,
or one the broker says exists): a mistyped name is a 404, not a silent no-op.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Celery
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.responses import json_response
from celeriac.api.tasks import cluster_of
from celeriac.queues import queue_consumers

log = logging.getLogger("celeriac.broker")


class UnknownQueue(LookupError):
    pass


def purge_queue(app: Celery, name: str, known: bool) -> int:
    """Purge ``name``; how many messages went. Blocking: call it from a thread."""
    with app.connection_for_write() as conn:
        channel: Any = conn.channel()
        try:
            if not known:
                try:
                    channel.queue_declare(queue=name, passive=True)
                except Exception as exc:
                    raise UnknownQueue(name) from exc
            return int(channel.queue_purge(queue=name) or 0)
        finally:
            with contextlib.suppress(Exception):
                channel.close()


async def purge(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    if not name:
        raise APIError(400, "Missing queue name")
    known = name in queue_consumers(cluster.worker_info) or name in (
        cluster.app.amqp.queues or {}
    )
    try:
        purged = await cluster.control.run(purge_queue, cluster.app, name, known)
    except UnknownQueue:
        raise APIError(404, f"Unknown queue '{name}'") from None
    except Exception as exc:  # the broker refused or went away
        log.warning("purging %s failed: %s", name, exc)
        raise APIError(503, f"Cannot purge '{name}': {exc}") from None
    log.info("purged %d messages from queue %s", purged, name)
    return json_response({"queue": name, "purged": purged,
                          "message": f"Purged {purged} messages from '{name}'"})


routes = [Route("/api/celeriac/queues/{name:path}/purge", purge, methods=["POST"])]
