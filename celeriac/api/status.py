"""celeriac's own health: is the event stream connected, and what has it seen."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac import __version__
from celeriac.api.responses import json_response
from celeriac.api.tasks import cluster_of


async def status(request: Request) -> Response:
    cluster = cluster_of(request)
    state = cluster.state
    stored = await run_in_threadpool(cluster.store.count)
    return json_response(
        {
            "version": __version__,
            "broker": cluster.broker_url,
            "role": cluster.role,  # leader or follower on a shared store; single otherwise
            "uptime": round(time.time() - cluster.started_at, 3),
            "events": {
                **cluster.source.counters.as_dict(),
                "applied": state.applied,
                "ignored": state.ignored,
                "last_event_at": state.last_event_at,
            },
            "tasks_stored": stored,
            # Write failures (disk full, read-only) show here while the API keeps serving.
            "store": cluster.store.stats(),
            "workers": state.worker_status(),
        }
    )


routes = [Route("/api/celeriac/status", status, methods=["GET"])]
