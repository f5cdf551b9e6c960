"""``/ui/stream``: server-sent events for the live pages.

The first message (``hello``) carries the workers, the task counts and the throughput samples
kept so far; each later one the tasks that changed since the message before, merged over every
tick this browser missed while it was slow. A browser more than the hub's history behind gets
``reset`` and reloads what it shows from the JSON API.

Message: ``{"v", "ts", "hello", "reset", "workers", "counts", "worker_counts", "total",
"tasks": [row, ...], "more", "samples": [[ts, events, succeeded, failed], ...]}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from celeriac.api.tasks import cluster_of
from celeriac.web.hub import Hub

#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE = 15.0
#: The browser waits this long before reconnecting (EventSource's ``retry``).
RETRY_MS = 2000


def hub_of(request: Request) -> Hub:
    """The app's one hub, made on first use (the app owns it, no module global)."""
    state = request.app.state
    hub: Hub | None = getattr(state, "web_hub", None)
    if hub is None:
        hub = Hub(cluster_of(request))
        state.web_hub = hub
    return hub


def hello(hub: Hub) -> dict[str, Any]:
    snap = hub.snapshot
    return {
        "v": hub.version,
        "hello": True,
        "reset": False,
        "workers": snap.workers,
        "counts": snap.counts,
        "worker_counts": snap.worker_counts,
        "total": snap.total,
        "tasks": [],
        "more": False,
        "samples": [list(s) for s in hub.samples],
    }


def delta(hub: Hub, seen: int) -> dict[str, Any]:
    """Everything since tick ``seen``, the task changes of every tick merged (newest wins)."""
    ticks = [t for t in hub.history if t.version > seen]
    reset = not ticks or ticks[0].version != seen + 1
    tasks: dict[str, dict[str, Any]] = {}
    for t in ticks:
        tasks.update(t.tasks)
    snap = hub.snapshot
    return {
        "v": hub.version,
        "ts": ticks[-1].ts if ticks else None,
        "hello": False,
        "reset": reset,
        "workers": snap.workers,
        "counts": snap.counts,
        "worker_counts": snap.worker_counts,
        "total": snap.total,
        "tasks": list(tasks.values()),
        "more": reset or any(t.more for t in ticks),
        "samples": [list(t.sample) for t in ticks],
    }


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS) + b"\n\n"


async def stream(request: Request) -> Response:
    hub = hub_of(request)

    async def events() -> AsyncIterator[bytes]:
        hub.subscribe()
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            if hub.version == 0:  # the poller just started: wait for its first tick
                await hub.wait_after(0, 5.0)
            seen = hub.version
            yield sse(hello(hub))
            while True:
                if not await hub.wait_after(seen, KEEPALIVE):
                    yield b": keepalive\n\n"
                    continue
                message = delta(hub, seen)
                seen = message["v"]
                yield sse(message)
        finally:
            hub.unsubscribe()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


routes = [Route("/ui/stream", stream, methods=["GET"])]
