"""Worker endpoints: what the workers say about themselves, and commands sent to one of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import arguments, get_bool, get_int, get_str
from celeriac.api.responses import json_response
from celeriac.api.tasks import cluster_of
from celeriac.cluster import Cluster
from celeriac.queues import queue_lengths, reported_queues

#: The most processes one grow or shrink may add or remove: a typo of n=10000000 must not make
#: a worker fork until the machine gives out (call again to go further).
MAX_POOL_STEP = 1000


async def list_workers(request: Request) -> Response:
    args = await arguments(request)
    refresh = get_bool(args, "refresh")
    status = get_bool(args, "status")
    workername = get_str(args, "workername")
    cluster = cluster_of(request)
    if status:
        return json_response(cluster.worker_status())
    if workername and not cluster.is_worker(workername):
        raise APIError(404, f"Unknown worker '{workername}'")
    if refresh:
        await cluster.refresh_workers(workername)
    else:
        await cluster.fill_workers()
        if workername and workername not in cluster.worker_info:
            await cluster.refresh_workers(workername)
    if workername:
        if workername not in cluster.worker_info:
            raise APIError(404, f"Unknown worker '{workername}'")
        return json_response({workername: cluster.worker_info[workername]})
    return json_response(cluster.worker_info)


def _worker(request: Request) -> tuple[Cluster, str]:
    cluster = cluster_of(request)
    name = request.path_params.get("name", "")
    if not cluster.is_worker(name):
        raise APIError(404, f"Unknown worker '{name}'")
    return cluster, name


def _reply_or_fail(reply: dict[str, Any] | None, failure: str) -> Any:
    """The worker's ``ok`` text, or a 403 with its error.

    A worker that does not answer within the inspect timeout (one that died but is still
    listed) is a 504, as everywhere in this API; Flower gives 403 "...: Unknown reason".
    """
    if reply is None:
        raise APIError(504, f"{failure}: no reply from the worker")
    if "error" in reply:
        raise APIError(403, f"{failure}: {reply['error']}")
    return reply.get("ok")


async def shutdown(request: Request) -> Response:
    cluster, name = _worker(request)
    await cluster.control.fire("shutdown", [name])
    return json_response({"message": "Shutting down!"})


async def pool_restart(request: Request) -> Response:
    cluster, name = _worker(request)
    reply = await cluster.control.command(name, "pool_restart", {"reload": False})
    _reply_or_fail(reply, f"Failed to restart the '{name}' pool")
    return json_response({"message": f"Restarting '{name}' worker's pool"})


def _pool_resize(command: str, verb: str, failure: str) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        cluster, name = _worker(request)
        n = get_int(await arguments(request), "n", 1)
        assert n is not None
        if n < 1:
            raise APIError(400, f"Invalid argument '{n}': n must be at least 1")
        if n > MAX_POOL_STEP:
            raise APIError(400, f"Invalid argument '{n}': n must be at most {MAX_POOL_STEP}")
        reply = await cluster.control.command(name, command, {"n": n})
        _reply_or_fail(reply, failure.format(name=name))
        return json_response({"message": f"{verb} '{name}' worker's pool by {n}"})

    return handler


async def autoscale(request: Request) -> Response:
    cluster, name = _worker(request)
    args = await arguments(request)
    low = get_int(args, "min")
    if low is None:
        raise APIError(400, "Missing argument min")
    high = get_int(args, "max")
    if high is None:
        raise APIError(400, "Missing argument max")
    if low < 0 or high < 1 or low > high:
        raise APIError(400, f"Invalid autoscale range min={low}, max={high}")
    reply = await cluster.control.command(name, "autoscale", {"min": low, "max": high})
    _reply_or_fail(reply, f"Failed to autoscale '{name}' worker")
    return json_response({"message": f"Autoscaling '{name}' worker (min={low}, max={high})"})


async def add_consumer(request: Request) -> Response:
    cluster, name = _worker(request)
    queue = get_str(await arguments(request), "queue", required=True)
    reply = await cluster.control.command(name, "add_consumer", {"queue": queue})
    ok = _reply_or_fail(reply, f"Failed to add '{queue}' consumer to '{name}' worker")
    return json_response({"message": ok or f"add consumer {queue}"})


async def cancel_consumer(request: Request) -> Response:
    cluster, name = _worker(request)
    queue = get_str(await arguments(request), "queue", required=True)
    reply = await cluster.control.command(name, "cancel_consumer", {"queue": queue})
    ok = _reply_or_fail(reply, f"Failed to cancel '{queue}' consumer from '{name}' worker")
    return json_response({"message": ok or f"no longer consuming from {queue}"})


async def queues_length(request: Request) -> Response:
    cluster = cluster_of(request)
    await cluster.refresh_queues()
    ordered = reported_queues(cluster.worker_info, cluster.app)
    lengths = await cluster.control.run(queue_lengths, cluster.app, ordered)
    return json_response(
        {"active_queues": [{"name": n, "messages": lengths.get(n, 0)} for n in ordered]}
    )


routes = [
    Route("/api/workers", list_workers, methods=["GET"]),
    Route("/api/worker/shutdown/{name:path}", shutdown, methods=["POST"]),
    Route("/api/worker/pool/restart/{name:path}", pool_restart, methods=["POST"]),
    Route(
        "/api/worker/pool/grow/{name:path}",
        _pool_resize("pool_grow", "Growing", "Failed to grow '{name}' worker's pool"),
        methods=["POST"],
    ),
    Route(
        "/api/worker/pool/shrink/{name:path}",
        _pool_resize("pool_shrink", "Shrinking", "Failed to shrink '{name}' worker's pool"),
        methods=["POST"],
    ),
    Route("/api/worker/pool/autoscale/{name:path}", autoscale, methods=["POST"]),
    Route("/api/worker/queue/add-consumer/{name:path}", add_consumer, methods=["POST"]),
    Route("/api/worker/queue/cancel-consumer/{name:path}", cancel_consumer, methods=["POST"]),
    Route("/api/queues/length", queues_length, methods=["GET"]),
]
