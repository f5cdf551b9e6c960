"""Read-only task endpoints: the stored history and results from the result backend."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from celery.result import AsyncResult
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import arguments, get_float, get_int, get_str
from celeriac.api.responses import (
    json_response,
    run_waiting,
    task_result_fields,
    wait_for_result,
)
from celeriac.cluster import Cluster
from celeriac.store.base import SORT_KEYS, TaskQuery

#: Keys of a task in ``/api/tasks``: the seed's example (workflow links are in task info).
LIST_KEYS = (
    "args", "client", "clock", "eta", "exception", "exchange", "expires", "failed", "kwargs",
    "name", "received", "result", "retried", "retries", "revoked", "routing_key", "runtime",
    "sent", "started", "state", "succeeded", "timestamp", "traceback", "uuid", "worker",
    "parent_id", "root_id",
)
RECEIVED_FORMAT = "%Y-%m-%d %H:%M"
#: ``limit`` and ``offset`` beyond this are cut to it: no store holds that many tasks, and a
#: database cannot take a larger integer (SQLite's are 64-bit).
MAX_PAGE = 2**62
#: Flower's UI sends "All" for "no filter"; its API accepts it too.
ALL = "All"


def path_value(request: Request, key: str) -> str:
    """A task id or name from the path. Flower's routes need at least one character; Starlette's
    let an empty one through (``$`` matches before a trailing line break, so ``/x/%0A`` too),
    and Celery refuses an empty id with a ValueError: so 404, as Flower."""
    value: str = request.path_params.get(key, "")
    if not value:
        raise APIError(404, "Unknown task ''")
    return value


def cluster_of(request: Request) -> Cluster:
    cluster: Cluster = request.app.state.cluster
    return cluster


def parse_task_query(args: dict[str, str]) -> TaskQuery:
    limit = get_int(args, "limit")
    # As Flower: a negative offset counts as 0, a negative limit gives an empty page.
    offset = min(max(get_int(args, "offset", 0) or 0, 0), MAX_PAGE)
    if limit is not None:
        limit = min(max(limit, 0), MAX_PAGE)
    sort_by = get_str(args, "sort_by")
    descending = False
    if sort_by:
        key = sort_by[1:] if sort_by.startswith("-") else sort_by
        if key not in SORT_KEYS:
            raise APIError(
                400, f"Invalid sort_by '{sort_by}', expected one of {', '.join(SORT_KEYS)}"
            )
        descending = sort_by.startswith("-")
        sort_by = key

    def received(name: str) -> float | None:
        raw = get_str(args, name)
        if raw is None:
            return None
        try:
            return datetime.strptime(raw, RECEIVED_FORMAT).timestamp()
        except ValueError:
            raise APIError(
                400,
                "Invalid received_start or received_end, expected format 'YYYY-MM-DD HH:MM'",
            ) from None

    def choice(name: str) -> str | None:
        value = get_str(args, name)
        return None if value == ALL else value

    return TaskQuery(
        limit=limit,
        offset=offset,
        sort_by=sort_by,
        descending=descending,
        state=choice("state"),
        taskname=choice("taskname"),
        workername=choice("workername"),
        received_start=received("received_start"),
        received_end=received("received_end"),
        search=get_str(args, "search"),
    )


async def list_tasks(request: Request) -> Response:
    query = parse_task_query(await arguments(request))
    cluster = cluster_of(request)
    try:
        records = await run_in_threadpool(cluster.store.query, query)
    except ValueError as exc:  # a malformed search
        return json_response({"error": str(exc)}, status=400)
    return json_response({r["uuid"]: {k: r.get(k) for k in LIST_KEYS} for r in records})


async def task_types(request: Request) -> Response:
    types = await run_in_threadpool(cluster_of(request).store.task_types)
    return json_response({"task-types": types})


async def task_info(request: Request) -> Response:
    task_id = request.path_params.get("task_id", "")
    record = await run_in_threadpool(cluster_of(request).state.task, task_id) if task_id else None
    if record is None:
        raise APIError(404, f"Unknown task '{task_id}'")
    info: dict[str, Any] = {k: record.get(k) for k in LIST_KEYS}
    info["task-id"] = task_id
    info["children"] = record.get("children") or []
    return json_response(info)


async def task_result(request: Request) -> Response:
    task_id = path_value(request, "task_id")
    timeout = get_float(await arguments(request), "timeout")
    cluster = cluster_of(request)
    # No request holds a thread for ever: a longer timeout is cut to --max-wait.
    longest = cluster.settings.max_wait

    def read() -> dict[str, Any]:
        # A result of this thread's own (Celery's backends are per thread).
        result = AsyncResult(task_id, app=cluster.app)
        if timeout:  # as Flower: 0 means do not wait
            # A timeout (or a backend error) leaves the state as it is.
            with contextlib.suppress(Exception):
                wait_for_result(result, min(max(timeout, 0.0), longest))
        # Read the state after the wait: a task that finished meanwhile reports its final
        # state (Flower reports the one read before the wait).
        return task_result_fields(task_id, result)

    if timeout:
        return json_response(await run_waiting(read))
    return json_response(await cluster.control.run(read))


routes = [
    Route("/api/tasks", list_tasks, methods=["GET"]),
    Route("/api/task/types", task_types, methods=["GET"]),
    Route("/api/task/info/{task_id:path}", task_info, methods=["GET"]),
    Route("/api/task/info", task_info, methods=["GET"]),
    Route("/api/task/result/{task_id:path}", task_result, methods=["GET"]),
]
