"""Numbers over the stored history for the UI's charts and failures view.

- ``GET /api/celeriac/stats/throughput?window=15m|1h|24h``: tasks succeeded and failed per
  bucket (every bucket listed, zeros included), oldest first;
- ``GET /api/celeriac/stats/task-types?window=...[&name=...]``: the same per task type, with
  runtime percentiles (p50, p90, p99) per bucket and over the whole window;
- ``GET /api/celeriac/failures?window=...``: failed tasks grouped by task name and exception
  type, with first and last seen (over everything stored), counts per bucket of the window,
  and the ``/api/tasks`` filters that list the group's tasks;
- ``GET /api/celeriac/stats/queues?window=...``: per queue, the most messages waiting in each
  bucket (None where no sample fell), from the sampler's memory (``queue_history.py``).

A task counts when its last event falls in a bucket (see ``store/aggregates.py``).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import get_str
from celeriac.api.responses import json_response
from celeriac.api.tasks import cluster_of
from celeriac.constants import FAILURE
from celeriac.queue_history import QueueSampler
from celeriac.store.aggregates import store_failure_groups, store_throughput, store_type_stats
from celeriac.store.search import MIN_TERM

#: window -> (bucket seconds, buckets)
WINDOWS: dict[str, tuple[int, int]] = {
    "15m": (30, 30),
    "1h": (60, 60),
    "24h": (900, 96),
}
DEFAULT_WINDOW = "1h"


def window_of(request: Request, default: str = DEFAULT_WINDOW) -> tuple[str, float, int, int]:
    """The window asked for: its name, the start of its first bucket, bucket size, buckets."""
    name = get_str(dict(request.query_params), "window") or default
    if name not in WINDOWS:
        raise APIError(400, f"Invalid window '{name}', expected one of {', '.join(WINDOWS)}")
    bucket, count = WINDOWS[name]
    now = time.time()
    since = (now // bucket) * bucket - (count - 1) * bucket  # the last bucket is the current one
    return name, since, bucket, count


async def throughput(request: Request) -> Response:
    name, since, bucket, count = window_of(request)
    found = await run_in_threadpool(store_throughput, cluster_of(request).store, since, bucket)
    by_index = {b.index: b for b in found}
    series = []
    for i in range(count):
        b = by_index.get(i)
        series.append([since + i * bucket, b.succeeded if b else 0, b.failed if b else 0])
    return json_response({
        "window": name, "since": since, "bucket": bucket,
        "succeeded": sum(s[1] for s in series), "failed": sum(s[2] for s in series),
        "series": series,
    })


async def task_types(request: Request) -> Response:
    window, since, bucket, count = window_of(request)
    only = get_str(dict(request.query_params), "name")
    store = cluster_of(request).store

    def read() -> tuple[list[Any], list[Any]]:
        per_bucket = store_type_stats(store, since, bucket, only)
        whole = store_type_stats(store, since, bucket * count, only)  # one bucket: the window
        return per_bucket, whole

    per_bucket, whole = await run_in_threadpool(read)
    types: dict[str, dict[str, Any]] = {}
    for t in whole:
        types[t.name] = {
            "succeeded": t.succeeded, "failed": t.failed,
            "failure_rate": _rate(t.failed, t.succeeded + t.failed),
            "p50": t.p50, "p90": t.p90, "p99": t.p99, "series": [],
        }
    for t in per_bucket:
        entry = types.get(t.name)
        if entry is not None:
            entry["series"].append(
                [since + t.index * bucket, t.succeeded, t.failed, t.p50, t.p90, t.p99]
            )
    return json_response({"window": window, "since": since, "bucket": bucket, "types": types})


def queue_series(request: Request) -> dict[str, Any]:
    """The queue-length chart's numbers; the sampler's ring is read on a thread (24 h of 50
    queues is a few hundred thousand slots)."""
    window, since, bucket, count = window_of(request)
    sampler: QueueSampler = request.app.state.queue_sampler
    history = sampler.history
    at, latest = history.latest()
    return {
        "window": window, "since": since, "bucket": bucket, "interval": sampler.interval,
        "sampled_at": at, "latest": latest, "error": sampler.error,
        "dropped": sorted(history.dropped),
        "queues": history.buckets(since, bucket, count),
    }


async def queues(request: Request) -> Response:
    return json_response(await run_in_threadpool(queue_series, request))


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def group_filters(name: str, exception_type: str, example: Any) -> dict[str, str]:
    """The /api/tasks (and /tasks) filters that list a failure group's tasks: the state and
    name exactly, and the exception type as the search ``"Type("`` (as its repr starts).

    The search is a substring of any text field, so a task of the same name whose traceback
    or args also hold ``Type(`` is listed too: the link can show a few more than the group."""
    filters = {"state": FAILURE}
    if name:
        filters["taskname"] = name
    text = exception_type + "(" if str(example or "").startswith(exception_type + "(") else (
        exception_type)
    if len(text) >= MIN_TERM:
        filters["search"] = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return filters


async def failures(request: Request) -> Response:
    window, since, bucket, count = window_of(request, "24h")
    groups = await run_in_threadpool(
        store_failure_groups, cluster_of(request).store, since, bucket
    )
    return json_response({
        "window": window, "since": since, "bucket": bucket,
        "groups": [
            {
                "name": g.name, "exception_type": g.exception_type, "count": g.count,
                "first": g.first, "last": g.last, "example": g.example,
                "series": [g.series.get(i, 0) for i in range(count)],
                "filters": group_filters(g.name, g.exception_type, g.example),
            }
            for g in groups
        ],
    })


routes = [
    Route("/api/celeriac/stats/throughput", throughput, methods=["GET"]),
    Route("/api/celeriac/stats/task-types", task_types, methods=["GET"]),
    Route("/api/celeriac/failures", failures, methods=["GET"]),
    Route("/api/celeriac/stats/queues", queues, methods=["GET"]),
]
